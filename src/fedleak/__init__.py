"""fedleak: audit privacy leakage (membership inference, gradient inversion) in federated learning."""

__version__ = "0.1.0"
