"""The headserve contract, generated from protos/headserve/v1/*.proto (see protos/generate.py)."""
