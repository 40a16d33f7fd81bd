"""Protect a data pipeline: a secret key, then every batch transformed on its way to the model.

1. a fresh key set from the OS CSPRNG, saved owner-only and loaded back;
2. images (here a synthetic set generated in code: use your own uint8 [N, C, H, W] tensors, or a
   folder with kpfast.data.load_image_folder) and their channel statistics;
3. one BlockTransform: shuffle, negative/positive and FFX with Normalize folded in, one fused op
   per batch (uint8 in, normalised float out), on the device where the batches already are;
4. the same transform per image inside a torch DataLoader with worker processes;
5. the exact inverse: round(255 * inverse(y)) == x with rounding="nearest";
6. many keys in one launch: each image of a batch with its own key set.

    python examples/protect_data_pipeline.py [--images 5000] [--batch-size 256] [--workers 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import kpfast
from kpfast.data import DeviceLoader, channel_stats, make_synthetic


class ProtectedImages(Dataset):
    """A map-style data set that protects each image as it is read (CHW uint8 in, CHW float out)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: kpfast.BlockTransform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    # 1. A key set for 4x4 blocks of 3 channels; the file is the secret (mode 0600, never overwritten).
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pipeline.key"
        kpfast.KeySet.generate(block_size=4, channels=3).save(path)
        keys = kpfast.KeySet.load(path)
    print(f"key: {keys!r}")  # the repr shows a fingerprint, never the key

    # 2. The images and the statistics Normalize needs (of the plain training images).
    train, _ = make_synthetic(args.images, 1)
    stats = channel_stats(train.images)
    print(f"data: {train}; mean {tuple(round(m, 4) for m in stats.mean)}")

    # 3. One fused op per batch, where the batches are.
    protect = kpfast.BlockTransform(keys, ("shuffle", "negpos", "ffx"), mean=stats.mean, std=stats.std,
                                    rounding="nearest").to(args.device)
    loader = DeviceLoader(train, args.batch_size, device=args.device, shuffle=True, augment=False)
    start = time.perf_counter()
    for x, y in loader:
        model_input = protect(x)  # uint8 [B, 3, 32, 32] -> float32, protected and normalised
    print(f"device pipeline: {len(loader)} batches of {tuple(model_input.shape[1:])} {model_input.dtype} "
          f"on {args.device} in {time.perf_counter() - start:.2f} s")

    # 4. Per image, in worker processes (each worker receives the transform as it starts).
    per_image = kpfast.BlockTransform(keys, ("shuffle", "negpos", "ffx"), mean=stats.mean, std=stats.std,
                                      rounding="nearest")
    workers = DataLoader(ProtectedImages(train.images, train.labels, per_image), batch_size=args.batch_size,
                         num_workers=args.workers, shuffle=True)
    batch, _ = next(iter(workers))
    same = protect.cpu()(train.images[:8])
    print(f"DataLoader ({args.workers} workers): batches of {tuple(batch.shape)}; per image == per batch: "
          f"{torch.equal(per_image(train.images[:8]), same)}")

    # 5. The exact inverse (Normalize undone too): only the key holder can do it.
    x = train.images[:512]
    restored = torch.round(protect.inverse(protect(x)) * 255).to(torch.uint8)
    print(f"inverse round trip exact: {torch.equal(restored, x)}")

    # 6. Many keys, one launch: image n is protected with key set key_index[n].
    many_keys = kpfast.KeySet.generate_many(16, block_size=4, channels=3)
    many = kpfast.BlockTransform(many_keys, ("shuffle", "negpos", "ffx"), rounding="nearest")
    key_index = torch.arange(len(x)) % len(many_keys)
    y = many(x, key_index=key_index)
    one = kpfast.BlockTransform(many_keys[3], ("shuffle", "negpos", "ffx"), rounding="nearest")
    print(f"{len(many_keys)} keys in one launch: image 3 as with its own key alone: "
          f"{torch.equal(y[3], one(x[3]))}")


if __name__ == "__main__":
    main()
