"""Model merging: task vectors streamed from safetensors and the merge methods over them.

The methods (names, kinds, options, papers) are listed once, in :mod:`audit.merging.methods`.
"""
