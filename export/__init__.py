"""Export to an ONNX bundle (installed as dcclip.export): ONNX graphs, int8 quantisation, validation, bundle writing."""
