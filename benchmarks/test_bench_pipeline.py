"""pytest-benchmark: images/s of whole DataLoader pipelines (2 workers) on ImageNet-sized JPEG files:
decoding + RandomResizedCrop alone, kpfast's StreamLoader with the keyed chain fused with
Normalize, and a torchvision-style ToTensor+Normalize pipeline in plain torch (pipelines.py).

    python -m pytest benchmarks/test_bench_pipeline.py -q --benchmark-columns=median,ops
    python benchmarks/pipeline_table.py          (the same side by side, as images/s)

Goal: the key transform costs nothing visible next to JPEG decoding (kpfast within a few percent
of decode-only, and not slower than ToTensor+Normalize, which applies no key at all).
"""
import pytest

from pipelines import epoch_seconds, make_jpeg_folder, pipelines


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    folder = make_jpeg_folder(tmp_path_factory.mktemp("jpeg"))
    loaders = pipelines(folder)
    for loader in loaders.values():
        epoch_seconds(loader)  # warm-up: workers start, the transform's program compiles
    return loaders


@pytest.mark.parametrize("name", ["decode only (uint8)", "kpfast Shuffle+NP+FFX+Normalize",
                                  "ToTensor+Normalize (plain torch)"])
def test_pipeline_epoch(benchmark, loaders, name):
    """One epoch of 256 images in batches of 64; images/s = 256 / the time shown."""
    benchmark.group = "DataLoader pipeline, 256 JPEGs 500x375 -> 224x224"
    benchmark.pedantic(epoch_seconds, (loaders[name],), rounds=3)
