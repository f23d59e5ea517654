"""pyro-mfm: the Multimodal Factorization Model (Tsai et al., ICLR 2019) as a probabilistic program in Pyro."""

__version__ = "0.1.0"
