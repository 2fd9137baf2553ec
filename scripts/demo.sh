#!/usr/bin/env bash
# Set up, fetch Shakespeare, train a character-level GPT for 1,200 steps (~7 minutes on a
# 2-core CPU) and print a sample. Running it again resumes / skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
qkv data get shakespeare
qkv train configs/gpt-shakespeare-char.toml --set out_dir=runs/demo-char --set train.max_steps=1200
qkv generate runs/demo-char --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40 --seed 1
