"""Token ids and data keys shared by the data, model and loss layers."""

# Label value that the cross-entropy and every distillation term skip (PyTorch's default ignore_index).
IGNORE_INDEX = -100

# Id that stands for the image in unexpanded `input_ids`. The model replaces this one position
# with its vision tokens, so teacher and student may expand the same sample to different lengths.
# MobileVLM and LLaVA use the same value (IMAGE_TOKEN_INDEX), so their data and ours agree.
IMAGE_PLACEHOLDER_ID = -200

# The placeholder string in LLaVA-format conversations.
IMAGE_PLACEHOLDER_TEXT = "<image>"

# The key that names the image file of a LLaVA-format sample. Samples without it are text-only.
IMAGE_KEY = "image"
