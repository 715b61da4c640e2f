"""sparse_attn_edu: sparse attention from dense to Triton, one readable stage at a time.

Stages: ``dense`` -> ``masked`` -> ``blocked`` -> ``triton_kernels``; ``patterns`` describes
the masks they share, ``propagation`` how information travels through stacked layers.
Importing the package never needs Triton: ``triton_kernels`` is imported on demand.
"""

__version__ = "0.1.0"
