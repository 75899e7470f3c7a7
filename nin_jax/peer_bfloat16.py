"""The PyTorch peer (../shared/peer/torch_nin.py) with its forward pass under
`torch.autocast("cpu", dtype=torch.bfloat16)`: PyTorch's mixed precision, to time beside
nin-jax's `model.dtype=bfloat16` (`python -m nin_jax.benchmark --dtypes=float32,bfloat16`).

  python -m nin_jax.peer_bfloat16 PEER_SCRIPT --arch cifar --batch 128 --steps 10 --channels-last

Everything but the forward pass is the peer's own code, run unchanged (its argument parsing,
its SGD step, its timing and its one JSON line): the peer's model builders are wrapped so that
the network's forward runs under autocast (convolutions and matmuls in bfloat16, weights kept
float32) and returns float32 logits, so the loss is float32 as in nin-jax, and PyTorch's
recommended recipe (backward outside autocast). Needs torch; not a dependency of nin-jax.
"""
import importlib.util
import sys


def _autocast_forward(build):
  import torch

  def built(*args, **kwargs):
    net = build(*args, **kwargs)
    forward = torch.autocast("cpu", dtype=torch.bfloat16)(net.forward)
    net.forward = lambda x: forward(x).float()
    return net
  return built


def main(argv):
  """argv: [peer script path, peer arguments...]; prints the peer's JSON line."""
  script, *peer_args = argv
  spec = importlib.util.spec_from_file_location("torch_nin_peer", script)
  peer = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(peer)
  peer.nin_cifar = _autocast_forward(peer.nin_cifar)
  peer.nin_imagenet = _autocast_forward(peer.nin_imagenet)
  sys.argv = [script, *peer_args]
  peer.main()


if __name__ == "__main__":
  main(sys.argv[1:])
