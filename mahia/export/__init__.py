"""torch.export -> portable ONNX -> Polygraphy parity -> artifact directory: the `mahia-export` pipeline."""
