import pytest

from vlmrl.data.frames import FrameOptions

SMALL = FrameOptions(min_pixels=56 * 56, max_pixels=56 * 56, frame_format="png")


@pytest.fixture(scope="session")
def bench(synth_dir, tmp_path_factory):
    from vlmrl.eval import load_benchmark

    cache = tmp_path_factory.mktemp("bench-cache")
    return load_benchmark(synth_dir / "bench.json", name="synthetic", frames=SMALL, cache_dir=cache, workers=1)
