"""Serving an exported artifact: `mahia-serve` on Ray Serve (app, classifier, protocol, cli) and a Triton
Inference Server model repository (triton). Nothing in mahia imports this package."""
