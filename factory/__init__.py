"""factory: recipe-driven Reinforcement-Learned Teaching (RLT) pipeline."""

__version__ = "0.1.0"
