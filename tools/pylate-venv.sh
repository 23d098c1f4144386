#!/usr/bin/env bash
# PyLate in a venv of its own (it pins sentence-transformers 5.3 and transformers <= 5.3, which
# the server's venv outgrew), sharing the server venv's torch through a .pth file that names
# a folder holding torch alone: the reference for the colbert head's tests.
#   tools/pylate-venv.sh SERVER_VENV PYLATE_VENV
set -euo pipefail
server="$1"
venv="$2"
site=$("$server/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$venv"
python3 -m venv "$venv"
mkdir -p "$venv/torch-only"
for entry in "$site"/torch "$site"/torchgen "$site"/torch-*.dist-info; do
  ln -s "$entry" "$venv/torch-only/"
done
own=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$(cd "$venv/torch-only" && pwd)" > "$own/headserve-torch.pth"
"$venv/bin/pip" install -q sentence-transformers==5.3.0 transformers==5.3.0 datasets \
  ujson==5.12.0 sympy networkx jinja2 fsspec filelock typing_extensions
"$venv/bin/pip" install -q --no-deps pylate==1.6.0
"$venv/bin/python" -c "import pylate, torch, transformers; assert transformers.__version__ == '5.3.0'"
