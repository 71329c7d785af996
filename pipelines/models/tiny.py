"""The `tiny` model family: random-weight FLUX.1 and FLUX.2 [klein] models for every tool, built locally in seconds.

Each tool says how its model is built (pipelines.tools); this module has the shared parts of each model family
(pipelines.families): FLUX.1's CLIP, T5 and VAE; FLUX.2's Qwen3 text encoder and VAE.

Every directory is in diffusers' on-disk format (model_index.json, one folder per component, locally
built tokenizers), so the tiny family goes through the same loading code as real weights. Shared
components are byte-identical across the tools of a family, as they are in the real models.
Every Linear has in_features >= 16 (torch's CPU int8 matmul crashes below that).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..paths import cache_root

TINY_VERSION = "v1"
HIDDEN = 64  # transformer width: 2 heads x 32
TEXT_DIM = 64  # T5 d_model == joint_attention_dim
POOLED_DIM = 64  # CLIP hidden size == pooled_projection_dim
QWEN_DIM = 32  # the tiny Qwen3's width; klein stacks three of its hidden states: joint_attention_dim 3 x 32
QWEN_LAYERS = 27  # klein reads hidden states 9, 18 and 27, so the tiny Qwen3 has the layers to give them


def tiny_root() -> Path:
    return cache_root() / "tiny" / TINY_VERSION


def ensure_tiny_family(tools, root: Path | None = None) -> Path:
    """Build the tiny models of ``tools`` (pipelines.tools) that are missing, and return the family's folder.

    Each tool writes its folders into a temporary folder first; each is then renamed into place, so a folder
    that exists is complete. Tools that share a folder (Redux runs dev's model) build it once.
    """
    root = Path(root) if root else tiny_root()
    root.mkdir(parents=True, exist_ok=True)
    shared: dict[str, dict] = {}  # family name -> its shared components, built once
    for tool in tools:
        if all((root / name).exists() for name in tool.tiny_folders()):
            continue
        family = tool.family.name
        if family not in shared:
            shared[family] = SHARED[family]()
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        try:
            tool.build_tiny(tmp, shared[family])
            for name in tool.tiny_folders():
                if not (root / name).exists():
                    try:
                        (tmp / name).rename(root / name)
                    except OSError:  # another process put it there first
                        if not (root / name).exists():
                            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def clip_tokenizer():
    from transformers import CLIPTokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    printable = [chr(c) for c in range(33, 127)]
    pieces += [("\u2581" + c, -2.5) for c in printable] + [(c, -3.0) for c in printable]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def shared_components() -> dict:
    """CLIP, T5, VAE, scheduler and tokenizers, deterministic."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    seeded(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=POOLED_DIM, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=POOLED_DIM,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    seeded(1)
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_2), d_model=TEXT_DIM, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    )
    seeded(2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def tiny_transformer(seed: int, in_channels: int = 64, guidance: bool = True, hidden: int = HIDDEN,
                     num_layers: int = 1, num_single_layers: int = 2):
    """A FLUX transformer with the real layout at a small width (``hidden`` = heads x 32)."""
    from diffusers import FluxTransformer2DModel

    seeded(seed)
    heads = hidden // 32
    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64, num_layers=num_layers,
        num_single_layers=num_single_layers, attention_head_dim=32, num_attention_heads=heads,
        joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM, guidance_embeds=guidance,
        axes_dims_rope=(8, 12, 12),
    )


def qwen_tokenizer():
    """A byte-level BPE tokenizer of Qwen's kind (no merges: one token per byte) with Qwen's chat markers and a
    chat template, as Flux2KleinPipeline formats the prompt with ``apply_chat_template``."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[token] = len(vocab)
    template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=template, model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def klein_shared_components() -> dict:
    """FLUX.2 [klein]'s shared parts, deterministic: a Qwen3 text encoder, the FLUX.2 VAE (32 latent channels),
    the scheduler and the tokenizer."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    seeded(3)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN_DIM, intermediate_size=64,
                    num_hidden_layers=QWEN_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    )
    seeded(4)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, latent_channels=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_klein_transformer(seed: int, hidden: int = HIDDEN, num_layers: int = 1, num_single_layers: int = 2):
    """A FLUX.2 transformer with klein's layout at a small width (``hidden`` = heads x 32; no guidance embedder)."""
    from diffusers import Flux2Transformer2DModel

    seeded(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=32, num_attention_heads=hidden // 32, joint_attention_dim=3 * QWEN_DIM,
        timestep_guidance_channels=256, axes_dims_rope=(8, 8, 8, 8), guidance_embeds=False,
    )


SHARED = {"flux1": shared_components, "flux2": klein_shared_components}  # family -> its shared tiny parts
