"""Deployment side of mgsv_sk: ONNX export of a fitted MGSVGrounder and a torch-free runtime."""
