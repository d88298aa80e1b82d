"""The VLM scorer foundation: Qwen2-VL / Qwen2.5-VL loading, inputs, answer parsing and scoring.

Modules (import them directly; this package does no work at import):
- `tokenizer`: `load_qwen_tokenizer` (a checkpoint's own, or the offline Qwen2.5-VL build);
- `model`: `TINY_NAME`, `COMPACT_NAME`, `tiny_config`, `load_model`, `load_tokenizer`, `make_processor`
  (the public entry points, dispatching by model name through `backends.backend_for`);
- `backends`: one module or package per backend: `qwen` (real checkpoints), `tiny` (the tiny random
  Qwen2.5-VL), `compact` (EfficientNet-Lite0 + SmolLM2-135M on a CPU);
- `unwrap`: `unwrap_model` (the transformers model inside a PEFT wrapper);
- `inputs`: `make_image_processor`, `build_prompt`, `encode_batch`, `model_inputs`;
- `answers`: `parse_integer`, `parse_level`, `ParseReport`, `LEVELS`;
- `scoring`: `greedy_scores`, `expected_scores`, `level_scores`, `integer_distribution`, `time_scorers`;
- `forward`: `decoder_hidden` (the training forward: frozen vision without autograd, `VisionCache`,
  padding-free packing).
"""
