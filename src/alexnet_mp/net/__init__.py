"""The net: the architecture as a table (arch), the nn.Module built from it (model), the LRN and its fused kernel, FLOPs and top-k error."""
