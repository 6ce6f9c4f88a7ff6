"""`mahia-bench`: latency, throughput, MFU, memory, energy and accuracy of every way of running the model on this
machine (eager, torch.compile and the CUDA backend on a GPU; eager and ONNX Runtime on a CPU), measured in one
process on the same inputs, with a per-component profile (mahia.bench.cli)."""
