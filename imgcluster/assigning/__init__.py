"""Assigning images with an exported model: onnxruntime inference and cluster folders."""
