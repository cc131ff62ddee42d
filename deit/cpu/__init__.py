"""The CPU speed paths of fp32 training: environment, compiled kernels and the layers using them."""
