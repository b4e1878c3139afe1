"""LLaVA: projector, image-feature splicing, chat template, two-stage freezing, generation,
presets and HF parity."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.data import (
    DialogueDataset,
    LlavaConversations,
    ShapesWorld,
    image_transform,
    make_loader,
    pixel_values,
    shapes_tokenizer,
)
from minivlm.data.chat import expand_image_tokens
from minivlm.models.llava import (
    SHAPES_CHAT,
    VICUNA_V1,
    LLaVA,
    LlavaCollator,
    LlavaConfig,
    build_projector,
    merge_image_features,
)
from minivlm.nn.lm import DecoderLM, LMConfig, lm_loss
from minivlm.nn.vit import clip_vision_config

transformers = pytest.importorskip("transformers")

IMG = 7  # <image> in minivlm.data.tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and robust when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(vocab: int = 40, **kw) -> LLaVA:
    """16 px images in 4x4 patches of 4 px (N = 16 image tokens), 3 ViT blocks, a 2-layer LM."""
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision=clip_vision_config(image_size=16, patch_size=4, dim=32, depth=3, num_heads=2,
                                  mlp_hidden=64),
        text=LMConfig(vocab_size=vocab, dim=32, depth=2, num_heads=4, num_kv_heads=2,
                      mlp_hidden=64, max_len=64),
        **kw,
    )  # fmt: skip
    return LLaVA(cfg)


def _prompt(rows: list[tuple[int, int, int]], vocab: int, image_id: int = IMG, seed: int = 0):
    """Right-padded ids: per row (text before, image tokens, text after), then padding 0."""
    g = torch.Generator().manual_seed(seed)
    T = max(a + n + b for a, n, b in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for r, (a, n, b) in enumerate(rows):
        words = torch.randint(8, vocab, (a + b,), generator=g)
        words[words == image_id] = 8
        ids[r, : a + n + b] = torch.cat([words[:a], torch.full((n,), image_id), words[a:]])
        mask[r, : a + n + b] = 1
    return ids, mask


# ---------------------------------------------------------------------------
# Projector and image features
# ---------------------------------------------------------------------------


def test_projector_parameter_counts_of_llava_1_5():
    with torch.device("meta"):
        mlp = build_projector("mlp2x_gelu", 1024, 4096)
        lin = build_projector("linear", 1024, 4096)
    assert minivlm.count_parameters(mlp) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096 == 20_979_712
    assert minivlm.count_parameters(lin) == 4_198_400
    # mlp2x_gelu is Linear -> exact GELU -> Linear
    torch.manual_seed(0)
    p = build_projector("mlp2x_gelu", 6, 5)
    x = torch.randn(2, 3, 6)
    ref = F.linear(F.gelu(F.linear(x, p.fc1.weight, p.fc1.bias)), p.fc2.weight, p.fc2.bias)
    torch.testing.assert_close(p(x), ref)
    with pytest.raises(ValueError, match="projector_type"):
        LlavaConfig(projector_type="qformer")


@pytest.mark.parametrize("layer,strategy", [(-2, "default"), (-1, "full"), (0, "default"),
                                            ([-3, -1], "full")])  # fmt: skip
def test_vision_features_take_the_chosen_layer_with_or_without_cls(layer, strategy):
    model = _tiny(vision_feature_layer=layer, vision_feature_select_strategy=strategy).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    hidden = model.vision_tower.encode(x, return_layers=True).hidden_states  # 4 x (2, 17, 32)
    layers = layer if isinstance(layer, list) else [layer]
    ref = torch.cat([hidden[i] for i in layers], dim=-1)
    if strategy == "default":
        ref = ref[:, 1:]  # CLS dropped
    N = 16 + (strategy == "full")
    assert model.num_image_tokens == N
    with torch.no_grad():
        feats = model.vision_features(x)
        proj = model.encode_images(x)
    assert feats.shape == (2, N, 32 * len(layers))
    torch.testing.assert_close(feats, ref, atol=1e-6, rtol=1e-6)
    assert proj.shape == (2, N, 32)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        _tiny(vision_feature_layer=4)  # only 4 hidden states: 0..3


# ---------------------------------------------------------------------------
# Image tokens in the text
# ---------------------------------------------------------------------------


def test_merge_puts_features_in_the_image_slots_in_order():
    ids, _ = _prompt([(2, 3, 1), (0, 3, 3)], vocab=30)
    emb = torch.randn(2, ids.shape[1], 4)
    feats = torch.randn(2, 3, 4)
    out = merge_image_features(emb, ids, feats)
    slots = ids == IMG
    torch.testing.assert_close(out[0, 2:5], feats[0])
    torch.testing.assert_close(out[1, 0:3], feats[1])
    torch.testing.assert_close(out[~slots], emb[~slots])  # text untouched
    # two images in row 0, none in row 1: images fill the slots in reading order
    ids2, _ = _prompt([(1, 6, 1), (4, 0, 0)], vocab=30)
    out2 = merge_image_features(torch.zeros(2, 8, 4), ids2, feats)
    torch.testing.assert_close(out2[0, 1:7], feats.reshape(6, 4))
    assert out2[1].abs().sum() == 0


def test_wrong_number_of_image_tokens_names_the_row():
    ids, _ = _prompt([(2, 3, 1), (1, 2, 3)], vocab=30)
    with pytest.raises(ValueError, match=r"batch row 1: expected 3 image tokens .* got 2"):
        merge_image_features(torch.zeros(2, 6, 4), ids, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected 1 images x 3 = 3 image tokens"):
        merge_image_features(torch.zeros(2, 3, 4), torch.full((2, 3), IMG), torch.zeros(1, 3, 4))
    model = _tiny()
    ids, mask = _prompt([(2, 15, 1)], vocab=40)
    with pytest.raises(ValueError, match=r"batch row 0: expected 16 image tokens .* got 15"):
        model(ids, torch.randn(1, 3, 16, 16), mask)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids, None, mask)


def test_expand_image_tokens_repeats_each_placeholder():
    ids = torch.tensor([[5, 9, IMG, 10, 11], [5, IMG, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 10, 11], [-100, -100, 12, -100, -100]])
    out = expand_image_tokens(ids, 3, attention_mask=mask, labels=labels)
    assert out["input_ids"].tolist() == [[5, 9, IMG, IMG, IMG, 10, 11],
                                         [5, IMG, IMG, IMG, 12, 0, 0]]  # fmt: skip
    assert out["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0] * 2]
    assert out["labels"].tolist() == [[-100] * 5 + [10, 11], [-100] * 4 + [12, -100, -100]]
    # the result is what the model needs: N = 16 slots per row
    model = _tiny()
    ids, mask = _prompt([(3, 1, 2), (1, 1, 1)], vocab=40)
    ex = expand_image_tokens(ids, model.num_image_tokens, attention_mask=mask)
    assert ex["input_ids"].shape == (2, 21) and ((ex["input_ids"] == IMG).sum(1) == 16).all()
    out = model(ex["input_ids"], torch.randn(2, 3, 16, 16), ex["attention_mask"])
    assert out.logits.shape == (2, 21, 40)


# ---------------------------------------------------------------------------
# Chat template
# ---------------------------------------------------------------------------

DIALOGUE = [
    {"from": "human", "value": "<image>\nwhat color is the circle?"},
    {"from": "gpt", "value": "red."},
    {"from": "human", "value": "how many shapes?"},
    {"from": "gpt", "value": "two."},
]


def test_chat_template_supervises_only_the_assistant_answers():
    tok = shapes_tokenizer()
    enc = SHAPES_CHAT.encode(tok, DIALOGUE, num_image_tokens=2)
    words = tok.convert_ids_to_tokens(enc["input_ids"])
    assert words == [
        "[BOS]", "user", ":", "<image>", "<image>", "\n", "what", "color", "is", "the", "circle",
        "?", "assistant", ":", "red", ".", "[EOS]",
        "user", ":", "how", "many", "shapes", "?", "assistant", ":", "two", ".", "[EOS]",
    ]  # fmt: skip
    learned = [w if lab != -100 else None for w, lab in zip(words, enc["labels"])]
    assert learned == [None] * 14 + ["red", ".", "[EOS]"] + [None] * 8 + ["two", ".", "[EOS]"]
    supervised = [i for i, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100]
    assert supervised == tok.encode("red.") + [tok.eos_id] + tok.encode("two.") + [tok.eos_id]
    assert SHAPES_CHAT.render(DIALOGUE) == (
        "USER: <image>\nwhat color is the circle? ASSISTANT: red.</s>"
        "USER: how many shapes? ASSISTANT: two.</s>"
    )
    assert VICUNA_V1.render(DIALOGUE[:1], add_generation_prompt=True).startswith(
        "A chat between a curious user"
    )
    gen = SHAPES_CHAT.encode(tok, DIALOGUE[:3], add_generation_prompt=True)
    assert tok.convert_ids_to_tokens(gen["input_ids"][-2:]) == ["assistant", ":"]
    assert set(gen["labels"][-8:]) == {-100}
    with pytest.raises(ValueError, match=r"turn 1: expected a 'gpt' turn"):
        SHAPES_CHAT.encode(tok, [DIALOGUE[0], DIALOGUE[2]])
    with pytest.raises(ValueError, match="last turn"):
        SHAPES_CHAT.encode(tok, DIALOGUE, add_generation_prompt=True)


def test_collator_right_pads_and_masks_padding():
    tok = shapes_tokenizer()
    items = [{"conversations": DIALOGUE, "pixel_values": torch.zeros(3, 16, 16)},
             {"conversations": DIALOGUE[:2], "image": torch.ones(3, 16, 16)}]  # fmt: skip
    batch = LlavaCollator(tok, num_image_tokens=16)(items)
    long_, short = (
        len(SHAPES_CHAT.encode(tok, d, 16)["input_ids"]) for d in (DIALOGUE, DIALOGUE[:2])
    )
    assert batch["input_ids"].shape == batch["labels"].shape == (2, long_)
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (long_ - short)
    assert (batch["input_ids"][1, short:] == 0).all() and (batch["labels"][1, short:] == -100).all()
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="cuts into"):
        LlavaCollator(tok, num_image_tokens=16, max_length=10)(items)


def test_llava_json_records_with_and_without_image(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 16), (255, 0, 0)).save(tmp_path / "red.png")
    records = [
        {"id": "a", "image": "red.png", "conversations": DIALOGUE[:2]},
        {"id": "b", "conversations": [{"from": "system", "value": "two shapes."},
                                      *DIALOGUE[2:]]},
    ]  # fmt: skip
    (tmp_path / "chat.json").write_text(json.dumps(records))
    data = LlavaConversations(tmp_path / "chat.json", transform=image_transform(16))
    tok = shapes_tokenizer()
    model = _tiny(vocab=len(tok))
    batch = LlavaCollator(tok, model.num_image_tokens)([data[0], data[1]])
    assert batch["pixel_values"].shape == (1, 3, 16, 16)  # only record "a" has an image
    assert (batch["input_ids"] == IMG).sum(1).tolist() == [16, 0]
    # the system turn replaced the (empty) system prompt: [BOS] two shapes . user : ...
    assert tok.convert_ids_to_tokens(batch["input_ids"][1, :6]) == [
        "[BOS]", "two", "shapes", ".", "user", ":"
    ]  # fmt: skip
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.image_features.shape == (1, 16, 32)
    with pytest.raises(ValueError, match="has <image> but no image"):
        LlavaCollator(tok, 16)([{"conversations": DIALOGUE, "image": None}])


# ---------------------------------------------------------------------------
# Training forward, two stages, generation
# ---------------------------------------------------------------------------


def test_forward_loss_is_lm_loss_on_the_assistant_tokens():
    tok = shapes_tokenizer()
    model = _tiny(vocab=len(tok))
    items = [{"conversations": DIALOGUE, "pixel_values": torch.randn(3, 16, 16)},
             {"conversations": DIALOGUE[:2], "pixel_values": torch.randn(3, 16, 16)}]  # fmt: skip
    batch = LlavaCollator(tok, model.num_image_tokens)(items)
    with pytest.raises(TypeError, match="index"):  # unknown keywords raise; train() filters
        model(**batch, index=torch.arange(2))
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    assert out.image_features.shape == (2, 16, 32)
    torch.testing.assert_close(out.loss, lm_loss(out.logits, batch["labels"]))
    # by hand: the answer tokens of both rows ("red . [EOS]", "two . [EOS]"; "red . [EOS]")
    sup = batch["labels"][:, 1:] != -100  # (B, T-1) targets of positions 0..T-2
    assert sup.sum().item() == 9
    manual = F.cross_entropy(out.logits[:, :-1][sup], batch["labels"][:, 1:][sup])
    torch.testing.assert_close(out.loss, manual)
    assert model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).loss is None
    # nothing frozen: the gradient reaches the vision blocks that feed the projector
    out.loss.backward()
    vit = model.vision_tower
    assert vit.blocks[1].attn.q_proj.weight.grad.abs().sum() > 0
    assert vit.blocks[2].attn.q_proj.weight.grad is None  # layer -2: the last block is unused


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_parameters_get_no_grad_and_do_not_change(stage):
    tok = shapes_tokenizer()
    model = _tiny(vocab=len(tok))
    model.freeze_for_stage(stage)
    counts = model.trainable_parameters()
    assert counts["vision_tower"] == 0 and counts["projector"] == 32 * 32 * 2 + 64
    assert (counts["lm"] > 0) == (stage == 2)
    items = [{"conversations": DIALOGUE, "pixel_values": torch.randn(3, 16, 16)}] * 2
    batch = LlavaCollator(tok, model.num_image_tokens)(items)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a careless optimiser over *all* parameters, with weight decay: frozen ones must not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(**batch).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        trainable = n.startswith("projector") or (stage == 2 and n.startswith("lm."))
        assert p.requires_grad == trainable, n
        if trainable:
            assert p.grad is not None and not torch.equal(p, before[n]), n
        else:
            assert p.grad is None and torch.equal(p, before[n]), n
    with pytest.raises(ValueError, match="stage 1 or 2"):
        model.freeze_for_stage(3)


def test_generate_greedy_equals_argmax_recomputation_and_sampling_is_seeded():
    model = _tiny().eval()
    for p in model.lm.parameters():  # sharpen the random LM so the argmax is not a near-tie
        p.data.mul_(3.0)
    ids, mask = _prompt([(2, 16, 3), (1, 16, 1)], vocab=40, seed=2)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    new = model.generate(ids, x, max_new_tokens=5, temperature=0.0, attention_mask=mask, eos_id=-1)
    assert new.shape == (2, 5)
    for r in range(2):  # without a cache: append the argmax and run everything again
        seq = ids[r : r + 1, : int(mask[r].sum())]
        for t in range(5):
            with torch.no_grad():
                nxt = model(seq, x[r : r + 1]).logits[0, -1].argmax()
            assert nxt.item() == new[r, t].item()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    top1 = model.generate(ids, x, 5, temperature=0.7, top_k=1, attention_mask=mask, eos_id=-1)
    assert torch.equal(top1, new)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return model.generate(ids, x, 6, temperature=1.5, top_p=0.95, attention_mask=mask,
                              eos_id=-1, generator=g)  # fmt: skip

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_stage2_training_lowers_the_loss_on_shapes_dialogues():
    tok = shapes_tokenizer()
    data = ShapesWorld().generate(8, seed=0)
    model = minivlm.create_model("llava_tiny", vision_depth=2, text_depth=2).freeze_for_stage(2)
    assert model.config.text.vocab_size == len(tok) and model.num_image_tokens == 64
    items = [{"conversations": data.dialogue(i, "count"),
              "pixel_values": pixel_values(data.images[i])} for i in range(8)]  # fmt: skip
    batch = LlavaCollator(tok, model.num_image_tokens)(items)
    # minivlm.data's DialogueDataset batches (its own "user: ... assistant: ..." format) fit too
    ds_batch = next(iter(make_loader(DialogueDataset(data, tok, num_image_tokens=64), 4)))
    ds_batch.pop("index")  # bookkeeping, not an input: forward takes no unknown keywords
    assert torch.isfinite(model(**ds_batch).loss)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0  # about ln(81) = 4.4 at init
    assert losses[-1] < 0.5 * losses[0]


def test_existing_vision_encoder_and_language_model_are_used_as_they_are():
    """LLaVA(vision_encoder=, language_model=) plugs in trained parts (no copy, no re-init)."""
    donor = _tiny(vocab=50)
    vit, lm = donor.vision_tower, donor.lm
    before = {k: v.clone() for k, v in {**vit.state_dict(), **lm.state_dict()}.items()}
    torch.manual_seed(1)  # a different projector init than the donor's
    model = LLaVA(vision_encoder=vit, language_model=lm, projector_type="linear")
    assert model.vision_tower is vit and model.lm is lm
    assert model.config.vision == vit.config and model.config.text == lm.config
    assert model.config.projector_type == "linear" and isinstance(model.projector, torch.nn.Linear)
    after = {**vit.state_dict(), **lm.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # not re-initialised
    ids, mask = _prompt([(2, 16, 3)], vocab=50)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # same parts, same projector weights -> same logits as the donor
        model.projector = build_projector("mlp2x_gelu", 32, 32)
        model.projector.load_state_dict(donor.projector.state_dict())
        assert torch.equal(model(ids, x, mask).logits, donor(ids, x, mask).logits)
    # with an explicit config that agrees with the modules
    same = LLaVA(donor.config, vision_encoder=vit, language_model=lm)
    assert same.vision_tower is vit and same.lm is lm
    only_lm = LLaVA(donor.config, language_model=lm)  # a new ViT, the given LM
    assert only_lm.lm is lm and only_lm.vision_tower is not vit


def test_mismatched_modules_raise_naming_the_field():
    donor = _tiny(vocab=50)
    wide = LMConfig(vocab_size=50, dim=48, depth=2, num_heads=4, num_kv_heads=2, mlp_hidden=64,
                    max_len=64)  # fmt: skip
    with pytest.raises(ValueError, match=r"language_model.*config\.text.*dim: 32 vs 48"):
        LLaVA(replace(donor.config, text=wide), language_model=donor.lm)
    with pytest.raises(ValueError, match=r"vocab_size: 50 vs 40"):
        LLaVA(replace(donor.config, text=replace(donor.config.text, vocab_size=40)),
              language_model=donor.lm)  # fmt: skip
    vision = replace(donor.config.vision, dim=64, mlp_hidden=128)
    with pytest.raises(ValueError, match=r"vision_encoder.*config\.vision.*dim: 32 vs 64"):
        LLaVA(replace(donor.config, vision=vision), vision_encoder=donor.vision_tower)
    with pytest.raises(ValueError, match=r"depth: 3 vs 2"):  # an override that disagrees
        LLaVA(vision_encoder=donor.vision_tower,
              vision=replace(donor.config.vision, depth=2))  # fmt: skip
    with pytest.raises(TypeError, match="DecoderLM"):
        LLaVA(language_model=donor.vision_tower)
    with pytest.raises(TypeError, match="ViT"):
        LLaVA(vision_encoder=donor.lm)
    # the LM's vocabulary must hold the <image> id: LlavaConfig's own check still applies
    small = DecoderLM(replace(donor.config.text, vocab_size=7))  # ids 0..6: no room for 7
    with pytest.raises(ValueError, match="image_token_id=7 is outside"):
        LLaVA(language_model=small)


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------


def test_presets():
    tiny = minivlm.create_model("llava_tiny")
    cfg = tiny.config
    assert cfg.text.vocab_size == len(shapes_tokenizer()) and cfg.image_token_id == IMG
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.dim) == (64, 8, 128)
    assert cfg.vision_feature_layer == -2 and cfg.projector_type == "mlp2x_gelu"
    assert minivlm.create_model("llava_tiny", vocab_size=99).config.text.vocab_size == 99
    with pytest.raises(ValueError, match="unknown override"):
        minivlm.create_model("llava_tiny", depth=3)
    assert {"llava_tiny", "llava_1_5_7b"} <= set(minivlm.list_models("llava*"))
    with torch.device("meta"):  # shapes only: no memory, no init time
        big = minivlm.create_model("llava_1_5_7b")
    assert big.num_image_tokens == 576
    assert minivlm.count_parameters(big.projector) == 20_979_712
    # llava-hf/llava-1.5-7b-hf: vocabulary 32,064 with <image> = 32000
    hf_cfg = transformers.LlavaConfig(text_config=transformers.LlamaConfig(vocab_size=32064),
                                      image_token_index=32000)  # fmt: skip
    with torch.device("meta"):
        hf = transformers.LlavaForConditionalGeneration(hf_cfg)
    assert minivlm.count_parameters(big) == sum(p.numel() for p in hf.parameters())


# ---------------------------------------------------------------------------
# Hugging Face parity
# ---------------------------------------------------------------------------

HF_CONFIGS = {
    # penultimate layer, CLS dropped, GQA 6 query / 2 key-value heads
    "l-2_default_gqa": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_hidden_layers=3, image_size=16, patch_size=4),
        text=dict(vocab_size=72, hidden_size=48, intermediate_size=96, num_attention_heads=6,
                  num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=64,
                  pad_token_id=0),
        image_token_index=70, vision_feature_layer=-2, vision_feature_select_strategy="default"),
    # last layer with CLS kept, exact GELU in the ViT, plain multi-head attention, tied LM head
    "l-1_full_mha_tied": dict(
        vision=dict(hidden_size=24, intermediate_size=48, num_attention_heads=3,
                    num_hidden_layers=2, image_size=12, patch_size=6, hidden_act="gelu"),
        text=dict(vocab_size=50, hidden_size=32, intermediate_size=80, num_attention_heads=4,
                  num_key_value_heads=4, num_hidden_layers=3, max_position_embeddings=32,
                  pad_token_id=0, tie_word_embeddings=True, rope_theta=500.0),
        image_token_index=3, vision_feature_layer=-1, vision_feature_select_strategy="full"),
    # two ViT layers concatenated, 8 query / 2 key-value heads of width 8, projector w/o bias
    "layers[1,-1]_gqa4_nobias": dict(
        vision=dict(hidden_size=40, intermediate_size=40, num_attention_heads=5,
                    num_hidden_layers=4, image_size=24, patch_size=8),
        text=dict(vocab_size=90, hidden_size=64, intermediate_size=128, num_attention_heads=8,
                  num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=40,
                  pad_token_id=0, rms_norm_eps=1e-5),
        image_token_index=89, vision_feature_layer=[1, -1],
        vision_feature_select_strategy="default", multimodal_projector_bias=False),
}  # fmt: skip


def _random_hf(kw: dict, seed: int):
    torch.manual_seed(seed)
    top = {k: v for k, v in kw.items() if k not in ("vision", "text")}
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**kw["vision"]),
        text_config=transformers.LlamaConfig(**kw["text"]),
        projector_hidden_act="gelu",
        **top,
    )
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # perturb everything: a wrong mapping can't hide behind 0 or 1
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return hf


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_from_hf_matches_transformers(name):
    kw = HF_CONFIGS[name]
    hf = _random_hf(kw, seed=len(name))
    ours = LLaVA.from_hf(hf).eval()
    assert minivlm.count_parameters(ours) == sum(p.numel() for p in hf.parameters())
    # a copy: no tensor shared with HF (training ours must leave the HF model as it was)
    ptrs = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    assert not [n for n, p in ours.named_parameters() if p.untyped_storage().data_ptr() in ptrs]
    vc, V, image_id = kw["vision"], kw["text"]["vocab_size"], kw["image_token_index"]
    N = (vc["image_size"] // vc["patch_size"]) ** 2 + (kw["vision_feature_select_strategy"]
                                                        == "full")  # fmt: skip
    assert ours.num_image_tokens == N and ours.config.image_token_id == image_id
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, vc["image_size"], vc["image_size"], generator=g)
    padded = _prompt([(3, N, 6), (1, N, 2), (0, N, 4)], V, image_id, seed=1)
    full = _prompt([(2, N, 5), (4, N, 3), (7, N, 0)], V, image_id, seed=2)
    for ids, mask in (padded, (full[0], None), full):
        labels = ids.masked_fill(ids == image_id, -100)
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
        with torch.no_grad():
            ref = hf(input_ids=ids, pixel_values=x, attention_mask=mask, labels=labels)
            out = ours(ids, x, mask, labels=labels)
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        assert ref.logits[real].abs().max() > 1.0  # not a comparison between near-zeros
        err = (out.logits[real] - ref.logits[real]).abs().max().item()
        assert err < 1e-4, f"{name}: max |logits - HF| = {err:.2e}"
        assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)
    with torch.no_grad():  # the image features are HF's image_hidden_states
        feats = hf.model.get_image_features(pixel_values=x)
        feats = getattr(feats, "pooler_output", feats)
        hf_feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
        torch.testing.assert_close(ours.encode_images(x), hf_feats.reshape(3, N, -1),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_from_hf_rejects_other_models():
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        LLaVA.from_hf(torch.nn.Linear(2, 2))
    kw = HF_CONFIGS["l-2_default_gqa"]
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**kw["vision"]),
        text_config=transformers.MistralConfig(**kw["text"]),
        image_token_index=70,
    )
    with pytest.raises(ValueError, match="only Llama language models"):
        LLaVA.from_hf(transformers.LlavaForConditionalGeneration(cfg))
