"""Images in a vision-language model's step: how many, how many tokens, and what the frozen tower costs.

The tower and projector are frozen and their input (pixel values) needs no grad, so autograd saves nothing
inside them: their forward is a transient working set, gone before the language model runs, except what the
model itself keeps referenced (transformers 5.25 models/gemma3/modeling_gemma3.py ``Gemma3Model.forward``
holds ``mm_encoder_outputs["image"]``, the tower's last hidden state and the projected features, until it
returns).  The image tokens are ordinary positions of the sequence (``seq_len`` includes them); what changes
there is the attention mask: the processor's ``token_type_ids`` make image tokens attend to each other both
ways (``create_masks_for_vision_model``), so SDPA gets a dense mask on every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..models.arch import ModelArch
from .config import TrainConfig
from .states import rounded

FP32 = 4


@dataclass(frozen=True)
class ImageInputs:
    images: int  # images per sequence
    tokens: int  # image tokens per sequence (inside seq_len)


def image_inputs(arch: ModelArch, cfg: TrainConfig, strict: bool = True) -> ImageInputs:
    """Images and image tokens per sequence; refuses images for a text-only model and (``strict``, what the
    front ends ask) more image tokens than the sequence holds.  The planner's searches over shorter sequences
    are not strict: there the image tokens are capped at the sequence."""
    if not cfg.has_images:
        return ImageInputs(0, 0)
    v = arch.vision
    if v is None:
        raise UsageError(f"{arch.name} ({arch.model_type}) is a text-only model: it takes no images",
                         "drop --image-size / --images-per-sample / --image-tokens, or pick a vision-language model",
                         field="images_per_sample", value=cfg.images_per_sample or cfg.image_tokens or cfg.image_size)
    if v.model_type == "gemma4_vision":
        # Gemma4VisionModel (modeling_gemma4.py) patchifies each image at its own aspect ratio, pads to the soft-token
        # budget x pooling_kernel^2 patches and pools by position: a tower whose activations are not modelled yet
        raise UsageError(f"images for {arch.name}: Gemma 4's vision tower (gemma4_vision, variable-resolution patches) "
                         "is not in the torch-free memory model",
                         "estimate text-only fine-tuning (the tower is loaded and frozen either way)",
                         field="images_per_sample", value=cfg.images_per_sample or cfg.image_tokens or cfg.image_size)
    if cfg.image_tokens is not None:
        images = cfg.images_per_sample or -(-cfg.image_tokens // v.tokens_per_image)
        tokens = cfg.image_tokens
    else:
        images = cfg.images_per_sample or 1
        tokens = images * v.tokens_per_image
    if tokens > cfg.seq_len and not strict:
        return ImageInputs(images, cfg.seq_len)
    if tokens > cfg.seq_len:
        raise UsageError(f"{images} image(s) of {v.tokens_per_image} tokens each ({tokens} tokens) do not fit in a "
                         f"sequence of {cfg.seq_len} tokens", "image tokens are part of the sequence: raise --seq-len",
                         field="seq_len", value=cfg.seq_len)
    return ImageInputs(images, tokens)


@dataclass(frozen=True)
class VisionTerms:
    """Bytes for one micro batch on one GPU."""

    pixels: int  # the batch's pixel values (fp32, as the image processor returns them): alive the whole step
    tower_peak: int  # the tower's and projector's forward working set at its largest, over what lives anyway
    held_forward: int  # kept by the model while the language model runs (tower output, projected features)
    graph: int  # kept by autograd from the tower's forward to its backward (only when its input requires grad)
    tower_backward: int  # the tower's backward at its peak, over the weights, states and every trainable grad
    images: int  # images in the micro batch
    tracked: bool  # the tower's input requires grad (gradient checkpointing hooks it), so backward runs through it

    @property
    def formula(self) -> str:
        text = ("pixel values fp32 (whole step) + the frozen tower's largest working set (MLP: residual, normed "
                "input, fc1 and GELU outputs) + its output and the projected features held through the language model")
        if self.tracked:
            text += ("; with gradient checkpointing transformers makes the patch embeddings require grad "
                     "(enable_input_require_grads), so every tower layer's input is kept and backward recomputes "
                     "and runs through the frozen tower")
        return text


NO_IMAGES = VisionTerms(0, 0, 0, 0, 0, 0, False)


def vision_terms(arch: ModelArch, cfg: TrainConfig, act_bytes: int) -> VisionTerms:
    inputs = image_inputs(arch, cfg, strict=False)
    v = arch.vision
    if not inputs.images or v is None:
        return NO_IMAGES
    n = cfg.micro_batch * inputs.images
    N, hv, iv, a, NL = v.patches_per_image, v.hidden_size, v.intermediate_size, act_bytes, v.num_layers
    side, pooled = v.image_size, n * v.tokens_per_image
    X, I = rounded(n * N * hv * a), rounded(n * N * iv * a)  # one hidden-wide, one MLP-wide tower tensor
    pixels = rounded(n * v.num_channels * side * side * FP32)
    # the language model's input embeddings exist before the tower runs (Gemma3Model.forward embeds first)
    embeds = rounded(cfg.tokens * a * arch.hidden_size)
    # the patch embedding: the pixels cast to the weights' dtype, the conv output, then + position embedding
    patches = rounded(n * v.num_channels * side * side * a) + 2 * X
    # Gemma3Model keeps the tower's output (last_hidden_state) and the projected features until it returns
    held = X + rounded(pooled * arch.hidden_size * a)
    # transformers' gradient checkpointing (modeling_utils.py activation_checkpointing_enable) calls
    # enable_input_require_grads, which hooks the input embeddings of every PreTrainedModel inside, SigLIP's
    # patch_embedding too: the tower's input then requires grad, its layers are checkpointed like the decoder's,
    # and the gradient of the image features runs back through all of them.
    tracked = cfg.grad_ckpt
    if not tracked:
        # SiglipEncoderLayer's MLP under no saving (siglip/modeling_siglip.py): the patch embeddings
        # (SiglipEncoder's inputs_embeds, referenced until the encoder returns), the layer's input (the encoder's
        # loop variable), the residual after attention and the normed input stay referenced; fc1's output and the
        # GELU output are alive together (SiglipMLP.forward).  In the first layer the input is the embeddings.
        mlp = (4 if NL > 1 else 3) * X + 2 * I
        return VisionTerms(pixels, embeds + max(mlp, patches), held, 0, 0, n, False)
    stats = 2 * rounded(n * N * FP32)  # a LayerNorm's mean and rstd (fp32 on the GPU)
    lse = rounded(n * v.num_heads * N * FP32)  # SDPA's log-sum-exp
    # the hooked conv output is a leaf that requires grad: its AccumulateGrad node keeps it with the graph
    leaf = X
    # forward, at the last layer's GELU: the leaf, the embeddings and every earlier layer's output (checkpoint
    # inputs, the current layer's input among them), the residual, the normed input, fc1 and GELU outputs
    tower_peak = embeds + leaf + (NL + 2) * X + 2 * I
    # kept until the tower's backward: the leaf, every layer input, the last output (post LayerNorm's input and
    # stats), the projector's average pool input (a contiguous copy) and its RMSNorm's fp32 input and rsqrt
    graph = (leaf + NL * X + X + stats + X + rounded(pooled * hv * FP32) + rounded(pooled * FP32))
    # backward of the last tower layer, at its GELU: the leaf and the checkpoint inputs (NL), the incoming
    # gradient, the recomputed layer's saved tensors (q, k, v, attention output, LayerNorm 2's input: 5 wide,
    # GELU input, statistics), the gradient of the GELU output and the GELU's input gradient; the language
    # model's hooked input embeddings are a leaf too: it and its accumulated gradient live until backward ends
    tower_backward = leaf + NL * X + X + 5 * X + I + 2 * stats + lse + 2 * I + 2 * embeds
    return VisionTerms(pixels, tower_peak, held, graph, tower_backward, n, True)


LM_TARGETS_PREFIX = r"(.*\.)?language_model\.layers\.\d+\.(self_attn|mlp)\."


def language_model_targets(arch: ModelArch, cfg: TrainConfig) -> str | None:
    """PEFT target_modules that keep LoRA in the language model of a vision-language model (None for text
    models): a regex over the module names.  PEFT matches a plain list by the names' last part and "all-linear"
    by every nn.Linear (peft/tuners/tuners_utils.py _maybe_include_all_linear_layers), so either would also adapt
    SigLIP's q/k/v/out_proj and fc1/fc2; the estimate keeps the tower frozen.  A string target_modules is a full
    regex match (check_target_module_exists), as axolotl's Gemma 3 vision examples use it."""
    if arch.vision is None or not cfg.uses_adapters:
        return None
    from .targets import lora_linears

    names = "|".join(sorted({spec.name for spec in lora_linears(arch, cfg) if "." not in spec.name}))
    return f"{LM_TARGETS_PREFIX}({names})"


def parse_language_model_targets(text: str) -> tuple[str, ...] | None:
    """The module names inside a regex ``language_model_targets`` wrote (a file read back), else None."""
    if not text.startswith(LM_TARGETS_PREFIX + "(") or not text.endswith(")"):
        return None
    names = tuple(n for n in text[len(LM_TARGETS_PREFIX) + 1:-1].split("|") if n)
    return names if names and all(n.replace("_", "").isalnum() for n in names) else None

