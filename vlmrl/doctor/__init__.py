"""`vlmrl doctor`: the reliability campaign as code.

Each case feeds the pipeline one bad input, kill or tamper attempt, the way a new user
would, and classifies what happened (see :mod:`vlmrl.doctor.campaign`). The tally is the
figure the project reports: 0 crashes and 0 silent losses is the target.
"""
