"""Model merging: task vectors streamed from safetensors and the merge methods over them."""
