"""The model layer: MobileVLM (V1 and V2) and transformers' LLaVA behind one interface.

Entry points (import them from their modules; this package imports nothing, so that the
command line starts fast):

- `alignkd.models.loading`: `load_vlm`, `save_vlm`, `load_projector_weights`, `LoadedVLM`.
- `alignkd.models.forward`: `forward_vlm`, which returns the `VLMOutput` of interface.py.
- `alignkd.models.generation`: `greedy_generate`.
- `alignkd.models.spec`: `init_model` and the `ModelSpec` it reads.
- `alignkd.models.adapters`: `get_vlm_adapter` (sizes and modules of either family).
- `alignkd.models.probe`: the layer-0 attention probe.
"""
