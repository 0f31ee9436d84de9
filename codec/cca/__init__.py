"""The lossy codec: CNN transforms, hyperprior, uneven channel-wise entropy model, CCA loss.

Han et al., "Causal Context Adjustment Loss for Learned Image Compression" (NeurIPS 2024); what
the paper fixes and what we chose is in ``../shared/design/cca.md`` and each module's docstring.
"""
