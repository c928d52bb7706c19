"""Whisper on PyTorch: the second speech engine, for machines where CTranslate2 has no CUDA.

CTranslate2's CUDA build needs cuBLAS 12 and cuDNN 9; a GPU machine whose image holds
PyTorch for another CUDA cannot load it, and the libraries are too large to carry. This engine
runs wherever PyTorch runs, from the same weights: a CTranslate2 `model.bin` (Whisper base as
packaged) is read and converted in memory into Hugging Face transformers' Whisper modules, and
any Hugging Face Whisper checkpoint folder (how Arabic fine-tunes are published) loads as it is.

It answers the calls faster-whisper makes on CTranslate2's Whisper (`encode`, `generate`,
`detect_language`, `align`), with CTranslate2's decoding rules, so everything around them
(VAD, windows, temperature fallback, timestamps, word timing) stays faster-whisper's and the
two engines give the same text. The decoder step is ours rather than transformers' `generate`:
beam search must reorder a key/value cache we own, word timing needs the cross-attention of
chosen heads, and transformers has changed its cache interface between releases.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from models.whisper import ModelMissing

if TYPE_CHECKING:
    import torch

#: CTranslate2's DataType ids (include/ctranslate2/types.h), as numpy reads them; bfloat16
#: (5) has no numpy type and is widened by hand.
_CT2_DTYPES: dict[int, str] = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<u2"}
_BFLOAT16 = 5


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` (format 6), int8 and int16 weights
    dequantized to float32 with their scales, then aliases resolved (CTranslate2 aliases
    before it quantizes, so an alias has no scale of its own); float weights as stored
    (bfloat16 widened to float32).

    Raises:
        ModelMissing: the file is not a CTranslate2 model this reader knows.
    """
    variables, aliases = _walk_ct2(path, lambda _: True)
    dequantized = _dequantized(variables)
    dequantized.update({alias: dequantized[target] for alias, target in aliases.items()})
    return dequantized


def ct2_shapes(path: Path) -> tuple[dict[str, list[int]], int]:
    """Each variable's shape in a CTranslate2 `model.bin`, its data skipped, and the encoder's
    number of attention heads (a scalar variable, the one read)."""
    variables, _ = _walk_ct2(path, lambda name: name == "encoder/num_heads")
    return {name: list(array.shape) for name, array in variables.items()}, int(
        variables["encoder/num_heads"]
    )


def _walk_ct2(
    path: Path, wanted: Callable[[str], bool]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The variables of a `model.bin` (for those not `wanted`, whose bytes are skipped, not
    read, a zero array of their shape) and its aliases (alias -> variable)."""
    with open(path, "rb") as handle:
        version = _unpack(handle, "I")
        if version != 6:
            raise ModelMissing(f"{path.name}: CTranslate2 model format {version}, expected 6")
        _read_string(handle)  # the spec's name
        _unpack(handle, "I")  # its revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(_unpack(handle, "I")):
            name = _read_string(handle)
            shape = [_unpack(handle, "I") for _ in range(_unpack(handle, "B"))]
            type_id = _unpack(handle, "B")
            size = _unpack(handle, "I")
            if type_id not in _CT2_DTYPES:
                raise ModelMissing(f"{path.name}: unknown data type {type_id} in {name}")
            if not wanted(name):
                handle.seek(size, 1)
                variables[name] = np.broadcast_to(np.uint8(0), shape)  # its shape, no memory
                continue
            array = np.frombuffer(handle.read(size), dtype=_CT2_DTYPES[type_id]).reshape(shape)
            if type_id == _BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        aliases = {}
        for _ in range(_unpack(handle, "I")):
            alias, target = _read_string(handle), _read_string(handle)
            aliases[alias] = target
    return variables, aliases


def _unpack(handle: BinaryIO, code: str) -> int:
    size = struct.calcsize(code)
    data = handle.read(size)
    if len(data) != size:
        raise ModelMissing("CTranslate2 model ends early")
    value: int = struct.unpack(code, data)[0]
    return value


def _read_string(handle: BinaryIO) -> str:
    length = _unpack(handle, "H")
    return handle.read(length)[:-1].decode("utf-8")


def _dequantized(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 stores int8 weights as round(weight * scale), a scale per output row, and
    int16 weights with one scale for the whole matrix."""
    result: dict[str, np.ndarray] = {}
    for name, stored in variables.items():
        if name.endswith("/weight_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and stored.dtype in (np.int8, np.int16):
            scales = scale.astype(np.float32).reshape(-1, *([1] * (stored.ndim - 1)))
            result[name] = stored.astype(np.float32) / scales
        else:  # float16 stays so until it becomes the engine's type, a tensor at a time
            result[name] = stored
    return result


def hf_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variables under transformers' `WhisperForConditionalGeneration`
    names: fused query/key/value (and cross-attention key/value) projections are split, and
    the key projections, which carry no bias in Whisper, drop CTranslate2's zero bias."""
    state = {
        "model.encoder.conv1.weight": variables["encoder/conv1/weight"],
        "model.encoder.conv1.bias": variables["encoder/conv1/bias"],
        "model.encoder.conv2.weight": variables["encoder/conv2/weight"],
        "model.encoder.conv2.bias": variables["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": variables["encoder/position_encodings/encodings"],
        "model.decoder.embed_tokens.weight": variables["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": variables["decoder/position_encodings/encodings"],
        "proj_out.weight": variables["decoder/projection/weight"],
    }
    for side in ("encoder", "decoder"):
        state.update(_layer_norm(variables, f"{side}/layer_norm", f"model.{side}.layer_norm"))
        for index in range(count_layers(variables, side)):
            source, target = f"{side}/layer_{index}", f"model.{side}.layers.{index}"
            state.update(_attention(variables, f"{source}/self_attention", f"{target}.self_attn"))
            state.update(_layer_norm(variables, f"{source}/self_attention/layer_norm",
                                     f"{target}.self_attn_layer_norm"))  # fmt: skip
            if side == "decoder":
                state.update(_cross_attention(variables, f"{source}/attention",
                                              f"{target}.encoder_attn"))  # fmt: skip
                state.update(_layer_norm(variables, f"{source}/attention/layer_norm",
                                         f"{target}.encoder_attn_layer_norm"))  # fmt: skip
            for number, name in enumerate(("fc1", "fc2")):
                state[f"{target}.{name}.weight"] = variables[f"{source}/ffn/linear_{number}/weight"]
                state[f"{target}.{name}.bias"] = variables[f"{source}/ffn/linear_{number}/bias"]
            state.update(_layer_norm(variables, f"{source}/ffn/layer_norm",
                                     f"{target}.final_layer_norm"))  # fmt: skip
    return state


def count_layers(names: Iterable[str], side: str) -> int:
    """Layers of the `encoder` or `decoder` among CTranslate2 variable names."""
    parts = (name.split("/") for name in names if name.startswith(f"{side}/layer_"))
    return len({part[1] for part in parts if part[1].removeprefix("layer_").isdigit()})


def _layer_norm(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, Any]:
    return {f"{target}.weight": variables[f"{source}/gamma"],
            f"{target}.bias": variables[f"{source}/beta"]}  # fmt: skip


def _attention(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, Any]:
    query, key, value = np.split(variables[f"{source}/linear_0/weight"], 3)
    query_bias, _, value_bias = np.split(variables[f"{source}/linear_0/bias"], 3)
    return {
        f"{target}.q_proj.weight": query, f"{target}.q_proj.bias": query_bias,
        f"{target}.k_proj.weight": key,
        f"{target}.v_proj.weight": value, f"{target}.v_proj.bias": value_bias,
        f"{target}.out_proj.weight": variables[f"{source}/linear_1/weight"],
        f"{target}.out_proj.bias": variables[f"{source}/linear_1/bias"],
    }  # fmt: skip


def _cross_attention(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, Any]:
    key, value = np.split(variables[f"{source}/linear_1/weight"], 2)
    _, value_bias = np.split(variables[f"{source}/linear_1/bias"], 2)
    return {
        f"{target}.q_proj.weight": variables[f"{source}/linear_0/weight"],
        f"{target}.q_proj.bias": variables[f"{source}/linear_0/bias"],
        f"{target}.k_proj.weight": key,
        f"{target}.v_proj.weight": value, f"{target}.v_proj.bias": value_bias,
        f"{target}.out_proj.weight": variables[f"{source}/linear_2/weight"],
        f"{target}.out_proj.bias": variables[f"{source}/linear_2/bias"],
    }  # fmt: skip


@dataclass(frozen=True)
class TokenRules:
    """The token ids the decoding rules need, read from the model's own files."""

    eot: int
    sot: int
    no_timestamps: int
    no_speech: int | None
    language_ids: tuple[int, ...]
    #: What `suppress_tokens=[-1]` stands for: symbols and speaker tags, never spoken.
    suppressed: tuple[int, ...]
    #: Suppressed at the first generated step when `suppress_blank` is asked (a space, EOT).
    blank_ids: tuple[int, ...]
    alignment_heads: tuple[tuple[int, int], ...]
    vocabulary: tuple[str, ...] = field(repr=False)

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


def token_rules(
    folder: Path, tokenizer: Any, decoder_layers: int, decoder_heads: int
) -> TokenRules:
    """From transformers' `generation_config.json`, else the `config.json` beside it (older
    checkpoints keep the suppressed tokens there, CTranslate2 folders its own keys); the
    languages, where no file lists them, from the tokenizer's `<|xx|>` tokens; without
    alignment heads, the upper half of the decoder's heads (what openai-whisper and
    CTranslate2 assume too)."""
    config = json.loads((folder / "config.json").read_text())
    generation = folder / "generation_config.json"
    if generation.is_file():
        config = {**config, **json.loads(generation.read_text())}
    if "lang_ids" in config or "suppress_ids" in config:  # a CTranslate2 folder
        languages = config.get("lang_ids", [])
        suppressed = config.get("suppress_ids", [])
        blank = config.get("suppress_ids_begin", [])
    else:
        languages = sorted(config.get("lang_to_id", {}).values()) or _language_ids(tokenizer)
        suppressed = config.get("suppress_tokens") or []
        blank = config.get("begin_suppress_tokens") or []
    heads = config.get("alignment_heads")
    if not heads:
        heads = [[layer, head] for layer in range(decoder_layers // 2, decoder_layers)
                 for head in range(decoder_heads)]  # fmt: skip

    def token_id(name: str) -> int | None:
        found: int | None = tokenizer.token_to_id(name)
        return found

    special = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")
    eot, sot, no_timestamps = (token_id(name) for name in special)
    if eot is None or sot is None or no_timestamps is None:
        raise ModelMissing(f"{folder}: its tokenizer lacks Whisper's special tokens")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    return TokenRules(
        eot=eot,
        sot=sot,
        no_timestamps=no_timestamps,
        no_speech=token_id("<|nospeech|>") or token_id("<|nocaptions|>"),
        language_ids=tuple(languages),
        suppressed=tuple(suppressed),
        blank_ids=tuple(blank),
        alignment_heads=tuple((int(layer), int(head)) for layer, head in heads),
        vocabulary=tuple(tokenizer.id_to_token(index) or "" for index in range(size)),
    )


def load_modules(folder: Path, device: str, dtype: str) -> Any:
    """transformers' Whisper modules with the folder's weights: a Hugging Face checkpoint
    (config.json naming `whisper`) as it is, a CTranslate2 folder converted in memory.

    Raises:
        ModelMissing: the folder holds neither, or its weights do not fit the modules.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch_dtype = getattr(torch, dtype)
    config = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").is_file()
        else {}
    )
    model: Any
    if config.get("model_type") == "whisper":
        model = WhisperForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, dtype=torch_dtype
        )
    elif (folder / "model.bin").is_file():
        variables = read_ct2(folder / "model.bin")
        state = hf_state_dict(variables)
        with torch.device("meta"):  # no float32 model to fill first: the weights are assigned
            model = WhisperForConditionalGeneration(
                WhisperConfig(
                    vocab_size=state["model.decoder.embed_tokens.weight"].shape[0],
                    num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
                    d_model=state["model.decoder.embed_tokens.weight"].shape[1],
                    encoder_layers=count_layers(variables, "encoder"),
                    decoder_layers=count_layers(variables, "decoder"),
                    encoder_attention_heads=int(variables["encoder/num_heads"]),
                    decoder_attention_heads=int(variables["decoder/num_heads"]),
                    encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
                    decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
                    max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
                    max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
                )
            )
        converted: dict[int, torch.Tensor] = {}  # one tensor per array: the tied projection
        for array in state.values():
            if id(array) not in converted:
                converted[id(array)] = torch.tensor(array, dtype=torch_dtype)
        try:
            model.load_state_dict({name: converted[id(array)] for name, array in state.items()},
                                  strict=True, assign=True)  # fmt: skip
        except RuntimeError as error:
            raise ModelMissing(
                f"{folder}: weights do not fit Whisper's modules ({error})"
            ) from None
    else:
        raise ModelMissing(f"{folder} holds neither a Hugging Face nor a CTranslate2 Whisper")
    return model.to(device).eval().requires_grad_(False)


def _language_ids(tokenizer: Any) -> list[int]:
    """The language tokens: those between `<|startoftranscript|>` and `<|translate|>`."""
    start, end = (
        tokenizer.token_to_id("<|startoftranscript|>"),
        tokenizer.token_to_id("<|translate|>"),
    )
    if start is None or end is None:
        return []
    return list(range(start + 1, end))


@dataclass
class _Cache:
    """Each decoder layer's self-attention keys and values so far, [rows, heads, time, dim],
    and the cross-attention ones, computed once per batch item from the encoder output and
    shared by that item's `group` consecutive rows (its beams), never copied per beam."""

    own: list[tuple[torch.Tensor, torch.Tensor]]
    cross: list[tuple[torch.Tensor, torch.Tensor]]
    group: int = 1

    def select(self, rows: Sequence[int], items: Sequence[int], group: int) -> _Cache:
        """The cache of the rows kept (beam search reorders them each step), `group` rows for
        each of the batch items kept."""
        import torch

        device = self.cross[0][0].device
        row_index = torch.tensor(list(rows), device=device, dtype=torch.long)
        own = [(key[row_index], value[row_index]) for key, value in self.own]
        if list(items) == list(range(self.cross[0][0].shape[0])):  # the same items: no copy
            return _Cache(own, self.cross, group)
        item_index = torch.tensor(list(items), device=device, dtype=torch.long)
        return _Cache(own, [(key[item_index], value[item_index]) for key, value in self.cross],
                      group)  # fmt: skip


class _Decoder:
    """One step of Whisper's decoder over transformers' modules, with a cache we own."""

    def __init__(self, modules: Any) -> None:
        self._decoder = modules.model.decoder
        self._projection = modules.proj_out
        self.heads = modules.config.decoder_attention_heads

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        batch, time_steps, width = states.shape
        return states.view(batch, time_steps, self.heads, width // self.heads).transpose(1, 2)

    def start(self, encoder_output: torch.Tensor) -> _Cache:
        cross = []
        for layer in self._decoder.layers:
            attention = layer.encoder_attn
            cross.append((self._split(attention.k_proj(encoder_output)),
                          self._split(attention.v_proj(encoder_output))))  # fmt: skip
        return _Cache([], cross)

    def step(
        self, tokens: torch.Tensor, cache: _Cache, scores_of: frozenset[int] = frozenset()
    ) -> tuple[torch.Tensor, _Cache, dict[int, torch.Tensor]]:
        """Logits for `tokens` [batch, new] following what `cache` holds (causal among the
        new ones); with `scores_of`, also those layers' cross-attention scores before their
        softmax [batch, heads, new, frames], which word timing reads."""
        import torch
        from torch.nn import functional

        past = cache.own[0][0].shape[2] if cache.own else 0
        positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)
        hidden = (
            self._decoder.embed_tokens(tokens) + self._decoder.embed_positions.weight[positions]
        )
        own: list[tuple[torch.Tensor, torch.Tensor]] = []
        scores: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self._decoder.layers):
            attention = layer.self_attn
            normed = layer.self_attn_layer_norm(hidden)
            query = self._split(attention.q_proj(normed) * attention.scaling)
            key, value = (
                self._split(attention.k_proj(normed)),
                self._split(attention.v_proj(normed)),
            )
            if cache.own:
                key = torch.cat([cache.own[index][0], key], dim=2)
                value = torch.cat([cache.own[index][1], value], dim=2)
            own.append((key, value))
            mixed = functional.scaled_dot_product_attention(
                query, key, value, is_causal=past == 0 and tokens.shape[1] > 1, scale=1.0
            )
            hidden = hidden + attention.out_proj(self._merge(mixed))
            attention = layer.encoder_attn
            normed = layer.encoder_attn_layer_norm(hidden)
            query = self._split(attention.q_proj(normed) * attention.scaling)
            key, value = cache.cross[index]
            if index in scores_of:
                scores[index] = query @ key.transpose(-1, -2)
                mixed = torch.softmax(scores[index], dim=-1) @ value
            else:
                mixed = self._cross_attention(query, key, value, cache.group)
            hidden = hidden + attention.out_proj(self._merge(mixed))
            normed = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(functional.gelu(layer.fc1(normed)))
        logits = self._projection(self._decoder.layer_norm(hidden)).float()
        return logits, _Cache(own, cache.cross, cache.group), scores

    @staticmethod
    def _cross_attention(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group: int
    ) -> torch.Tensor:
        """An item's beams are folded into its query's time axis, so they read one copy of
        the item's encoder keys and values."""
        from torch.nn import functional

        rows, heads, time_steps, width = query.shape
        folded = (query.view(rows // group, group, heads, time_steps, width).transpose(1, 2)
                  .reshape(rows // group, heads, group * time_steps, width))  # fmt: skip
        mixed = functional.scaled_dot_product_attention(folded, key, value, scale=1.0)
        return (mixed.view(rows // group, heads, group, time_steps, width).transpose(1, 2)
                .reshape(rows, heads, time_steps, width))  # fmt: skip

    @staticmethod
    def _merge(states: torch.Tensor) -> torch.Tensor:
        batch, heads, time_steps, width = states.shape
        return states.transpose(1, 2).reshape(batch, time_steps, heads * width)


@dataclass
class GenerationResult:
    """What CTranslate2's `WhisperGenerationResult` carries that faster-whisper reads."""

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float = 0.0


@dataclass
class AlignmentResult:
    """What CTranslate2's `WhisperAlignmentResult` carries: (token row, frame) pairs."""

    alignments: list[tuple[int, int]]
    text_token_probs: list[float]


@dataclass
class _Request:
    """One batch item's prompt, cut as CTranslate2 cuts it: the tokens fed at once, the
    start token, and the forced prefix (a first timestamp, earlier text) fed a step at a time."""

    prefill: list[int]
    start: int
    prefix: list[int]
    sot_index: int


@dataclass
class _Hypothesis:
    """Tokens so far (or in the end) and their summed log-probability (or, once finished,
    normalized by length)."""

    tokens: list[int]
    score: float


class TorchWhisper:
    """CTranslate2's `models.Whisper`, as faster-whisper calls it, on PyTorch modules."""

    def __init__(self, modules: Any, rules: TokenRules, device: str) -> None:
        self._modules = modules
        self._decoder = _Decoder(modules)
        self.rules = rules
        self.device = device
        self.device_index = [0]
        self.n_mels = int(modules.config.num_mel_bins)
        self.is_multilingual = int(modules.config.vocab_size) >= 51865
        self._dtype = next(modules.parameters()).dtype

    def encode(self, features: Any, to_cpu: bool = False) -> torch.Tensor:
        """The encoder output of mel features [batch, mels, 3000] (faster-whisper always pads
        or trims to 30 s, the only length transformers' encoder takes)."""
        import torch

        tensor = torch.as_tensor(np.asarray(features), device=self.device, dtype=self._dtype)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        with torch.inference_mode():
            output: torch.Tensor = self._modules.model.encoder(tensor).last_hidden_state
        return output.cpu() if to_cpu else output

    def detect_language(self, encoder_output: torch.Tensor) -> list[list[tuple[str, float]]]:
        """One step from `<|startoftranscript|>`: a softmax over the language tokens alone."""
        import torch

        with torch.inference_mode():
            rows = encoder_output.shape[0]
            start = torch.full((rows, 1), self.rules.sot, device=encoder_output.device)
            logits, _, _ = self._decoder.step(start, self._decoder.start(encoder_output))
            ids = list(self.rules.language_ids)
            probabilities = torch.softmax(logits[:, 0, ids], dim=-1).cpu().numpy()
        return [sorted(((self.rules.vocabulary[token], float(probability))
                        for token, probability in zip(ids, row, strict=True)),
                       key=lambda pair: -pair[1]) for row in probabilities]  # fmt: skip

    def generate(
        self,
        encoder_output: torch.Tensor,
        prompts: Sequence[Sequence[int]],
        *,
        beam_size: int = 5,
        patience: float = 1.0,
        num_hypotheses: int = 1,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        max_length: int = 448,
        return_scores: bool = False,
        return_no_speech_prob: bool = False,
        max_initial_timestamp_index: int = 50,
        suppress_blank: bool = True,
        suppress_tokens: Sequence[int] | None = (-1,),
        sampling_topk: int = 1,
        sampling_temperature: float = 1.0,
    ) -> list[GenerationResult]:
        """Decode each prompt: beam search, or greedy/sampled with `beam_size` 1, under
        CTranslate2's rules (suppressed tokens, timestamp pairs, the token budget of
        `max_length`, scores as summed log-probabilities over length ** `length_penalty`)."""
        import torch

        _check_options(beam_size, patience, num_hypotheses, repetition_penalty, sampling_topk,
                       sampling_temperature)  # fmt: skip
        if len(prompts) != encoder_output.shape[0]:
            raise ValueError("one prompt per encoded window is needed")
        requests = [self._cut(list(prompt)) for prompt in prompts]
        start_step = len(requests[0].prefill)
        if any(len(request.prefill) != start_step or request.sot_index != requests[0].sot_index
               for request in requests):  # fmt: skip
            raise ValueError("every prompt of a batch must hold its task tokens at one place")
        budget = min(max_length // 2, max_length - start_step)
        if budget <= 0:
            raise ValueError("the maximum decoding length must be > 0")
        asked = list(suppress_tokens or ())
        suppressed = sorted({token for token in asked if token >= 0}
                            | (set(self.rules.suppressed) if -1 in asked else set()))  # fmt: skip
        rules = _Processing(
            suppressed=suppressed,
            blank=list(self.rules.blank_ids) if suppress_blank else [],
            timestamps=requests[0].start != self.rules.no_timestamps,
            max_initial=self.rules.timestamp_begin + max_initial_timestamp_index,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        with torch.inference_mode():
            cache = self._decoder.start(encoder_output.to(self._dtype))
            no_speech = [0.0] * len(requests)
            if start_step:
                prefill = torch.tensor([request.prefill for request in requests],
                                       device=encoder_output.device)  # fmt: skip
                logits, cache, _ = self._decoder.step(prefill, cache)
                if return_no_speech_prob and requests[0].sot_index < start_step:
                    no_speech = self._no_speech(logits[:, requests[0].sot_index])
            sot_starts = requests[0].sot_index == start_step
            at_first_step = self._no_speech if return_no_speech_prob and sot_starts else None
            search = _Search(self._decoder, self.rules, requests, budget, rules, length_penalty,
                             at_first_step)  # fmt: skip
            if beam_size == 1:
                best = sampling_topk == 1 or sampling_temperature == 0
                found, first = search.greedy(cache, num_hypotheses, best,
                                             sampling_topk, sampling_temperature)  # fmt: skip
            else:
                enough = round_half_away(beam_size * patience)
                found, first = search.beam(cache, beam_size, enough, num_hypotheses,
                                           early_exit=length_penalty == 0)  # fmt: skip
        if first is not None:
            no_speech = first
        return [
            GenerationResult(
                sequences_ids=[hypothesis.tokens for hypothesis in hypotheses],
                scores=[hypothesis.score for hypothesis in hypotheses] if return_scores else [],
                no_speech_prob=no_speech[index] if return_no_speech_prob else 0.0,
            )
            for index, hypotheses in enumerate(found)
        ]

    def align(
        self,
        encoder_output: torch.Tensor,
        start_sequence: Sequence[int],
        text_tokens: Sequence[Sequence[int]],
        num_frames: int | Sequence[int],
        median_filter_width: int = 7,
    ) -> list[AlignmentResult]:
        """Word timing: the cross-attention of the alignment heads over the text, each head
        normalized along the text, median-filtered along time, averaged, then a monotonic
        path through it (dynamic time warping), as CTranslate2 computes it."""
        import torch

        counts = [int(count) for count in np.ravel(num_frames)]
        frames = counts * len(text_tokens) if np.ndim(num_frames) == 0 else counts
        layers = frozenset(layer for layer, _ in self.rules.alignment_heads)
        inputs = [[*start_sequence, self.rules.no_timestamps, *text, self.rules.eot]
                  for text in text_tokens]  # fmt: skip
        longest = max(len(tokens) for tokens in inputs)
        results = []
        with torch.inference_mode():
            cache = self._decoder.start(encoder_output.to(self._dtype))
            for item, (tokens, text) in enumerate(zip(inputs, text_tokens, strict=True)):
                one = cache.select([], [item], 1)
                token_tensor = torch.tensor([tokens], device=encoder_output.device)
                logits, _, scores = self._decoder.step(token_tensor, one, layers)
                probabilities = torch.softmax(logits[0, :, : self.rules.eot], dim=-1)
                rows = torch.arange(len(text)) + len(start_sequence)
                text_probabilities = probabilities[rows, torch.tensor(list(text), dtype=torch.long)]
                heads = torch.stack(
                    [scores[layer][0, head] for layer, head in self.rules.alignment_heads]
                )
                heads = torch.softmax(heads[:, :, : frames[item] // 2].float(), dim=-1)
                if len(set(frames)) == 1 and len(tokens) < longest:
                    # CTranslate2 aligns such a batch at once, its shorter rows padded with
                    # copies of their last (EOT) row, which the normalization then counts.
                    padding = heads[:, -1:].expand(-1, longest - len(tokens), -1)
                    heads = torch.cat([heads, padding], dim=1)
                matrix = _alignment_matrix(heads.cpu(), median_filter_width)
                start = len(start_sequence)
                path = negative_dtw(matrix[start : start + len(text) + 1].numpy())
                results.append(
                    AlignmentResult(
                        path, [float(value) for value in text_probabilities.float().cpu()]
                    )
                )
        return results

    def _cut(self, prompt: list[int]) -> _Request:
        """The prompt fed at once ends before the last task token after
        `<|startoftranscript|>` (language, task, `<|notimestamps|>`); that one starts the
        decoding, and what follows it is forced."""
        if self.rules.sot not in prompt:
            raise ValueError("a Whisper prompt must hold <|startoftranscript|>")
        sot_index = prompt.index(self.rules.sot)
        length = sot_index
        while length < len(prompt) and self.rules.sot <= prompt[length] <= self.rules.no_timestamps:
            length += 1
        return _Request(prompt[: length - 1], prompt[length - 1], prompt[length:], sot_index)

    def _no_speech(self, logits: torch.Tensor) -> list[float]:
        """The probability of `<|nospeech|>` after `<|startoftranscript|>`, from raw logits."""
        import torch

        if self.rules.no_speech is None:
            return [0.0] * logits.shape[0]
        probabilities = torch.softmax(logits.float(), dim=-1)[:, self.rules.no_speech]
        return [float(value) for value in probabilities.cpu()]


def _check_options(
    beam_size: int,
    patience: float,
    num_hypotheses: int,
    repetition_penalty: float,
    sampling_topk: int,
    sampling_temperature: float,
) -> None:
    """CTranslate2's own checks, so a call it would refuse is refused here too, and the one
    combination this engine does not decode (a sampled beam) says so instead of running
    another search."""
    if beam_size <= 0 or patience <= 0 or num_hypotheses <= 0 or repetition_penalty <= 0:
        raise ValueError("beam_size, patience, num_hypotheses and repetition_penalty must be > 0")
    sampling = sampling_topk != 1 and sampling_temperature != 0
    if num_hypotheses > round_half_away(beam_size * patience) and not (beam_size == 1 and sampling):
        raise ValueError("num_hypotheses must be at most beam_size * patience")
    if beam_size > 1 and sampling:
        raise NotImplementedError("beam search with sampling is not decoded by this engine")


def round_half_away(value: float) -> int:
    """C++'s std::round, which CTranslate2 uses for beam_size * patience (Python rounds
    halves to even)."""
    return int(np.floor(abs(value) + 0.5) * np.sign(value))


@dataclass(frozen=True)
class _Processing:
    """CTranslate2's logits processors for one `generate` call, applied in its order."""

    suppressed: list[int]
    blank: list[int]
    timestamps: bool
    max_initial: int
    repetition_penalty: float
    no_repeat_ngram_size: int


class _Search:
    """The decoding loops of one `generate` call: rows of the decoder batch are hypotheses."""

    def __init__(
        self,
        decoder: _Decoder,
        rules: TokenRules,
        requests: list[_Request],
        budget: int,
        processing: _Processing,
        length_penalty: float,
        no_speech: Callable[[torch.Tensor], list[float]] | None,
    ) -> None:
        self._decoder = decoder
        self._rules = rules
        self._requests = requests
        self._budget = budget
        self._processing = processing
        self._length_penalty = length_penalty
        #: Given where `<|startoftranscript|>` starts the decoding: its first step gives the
        #: no-speech probabilities.
        self._no_speech = no_speech

    def _forced(self, item: int, step: int) -> bool:
        return step < len(self._requests[item].prefix)

    def _step(
        self,
        cache: _Cache,
        inputs: list[int],
        items: list[int],
        histories: list[list[int]],
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor, _Cache]:
        """Raw and processed logits [rows, vocabulary] of the next token of every row."""
        import torch

        device = cache.cross[0][0].device
        tokens = torch.tensor(inputs, device=device).unsqueeze(1)
        logits, cache, _ = self._decoder.step(tokens, cache)
        raw = logits[:, -1]
        begins = [len(self._requests[item].prefix) for item in items]
        return raw, self._process(raw.clone(), histories, step, begins), cache

    def _process(
        self, logits: torch.Tensor, histories: list[list[int]], step: int, begins: list[int]
    ) -> torch.Tensor:
        import torch

        processing = self._processing
        lowest = torch.finfo(logits.dtype).min
        if processing.repetition_penalty != 1:
            penalty = processing.repetition_penalty
            for row, history in enumerate(histories):
                if history:
                    ids = sorted(set(history))
                    values = logits[row, ids]
                    logits[row, ids] = torch.where(values < 0, values * penalty, values / penalty)
        if processing.no_repeat_ngram_size > 0:
            size = processing.no_repeat_ngram_size
            for row, history in enumerate(histories):
                if len(history) >= size:
                    tail = history[len(history) - size + 1 :] if size > 1 else []
                    banned = [history[start + size - 1]
                              for start in range(len(history) - size + 1)
                              if history[start : start + size - 1] == tail]  # fmt: skip
                    logits[row, banned] = lowest
        if processing.suppressed:
            logits[:, processing.suppressed] = lowest
        for row, begin in enumerate(begins):
            if processing.blank and step == begin:
                logits[row, processing.blank] = lowest
        if processing.timestamps:
            self._timestamp_rules(logits, histories, step, begins, lowest)
        return logits

    def _timestamp_rules(
        self,
        logits: torch.Tensor,
        histories: list[list[int]],
        step: int,
        begins: list[int],
        lowest: float,
    ) -> None:
        """Timestamps come in pairs, never go back, the first is at most `max_initial`, and
        a timestamp is forced where timestamps together are likelier than any text token.

        Each row's rule is worked out from its history here, as up to two spans of token ids
        to suppress, and applied to every row at once on the device: a loop of per-row writes
        and comparisons would wait on the GPU once for each row at each step."""
        import torch

        first, vocabulary = self._rules.timestamp_begin, logits.shape[1]
        spans = [self._timestamp_spans(history, begin, step, vocabulary)
                 for history, begin in zip(histories, begins, strict=True)]  # fmt: skip
        bounds = torch.tensor(spans, device=logits.device)
        ids = torch.arange(vocabulary, device=logits.device)
        suppressed = ((ids >= bounds[:, 0:1]) & (ids < bounds[:, 1:2])) | (
            (ids >= bounds[:, 2:3]) & (ids < bounds[:, 3:4])
        )
        suppressed[:, self._rules.no_timestamps] = True
        logits.masked_fill_(suppressed, lowest)
        if any(span[4] for span in spans):
            log_probs = torch.log_softmax(logits, dim=-1)
            timestamp_mass = torch.logsumexp(log_probs[:, first:], dim=-1)
            best_text = log_probs[:, :first].max(dim=-1).values
            forced = bounds[:, 4].bool() & (timestamp_mass > best_text)
            logits[:, :first] = logits[:, :first].masked_fill(forced.unsqueeze(1), lowest)

    def _timestamp_spans(
        self, history: list[int], begin: int, step: int, vocabulary: int
    ) -> tuple[int, int, int, int, int]:
        """One row's suppressed ids as two [start, end) spans, and 1 where the row is then
        weighed (timestamps against text)."""
        first, eot = self._rules.timestamp_begin, self._rules.eot
        if step == begin == 0:  # the first token is a timestamp, and not a late one
            return 0, first, self._processing.max_initial + 1, vocabulary, 0
        if step <= begin:
            return 0, 0, 0, 0, 0
        last = history[step - 1]
        if last >= first:
            before = history[step - 2] if step - 1 > begin else last
            if before >= first:  # a pair just closed: text (or the end) next
                return first, vocabulary, 0, 0, 0
            return 0, eot, first, last, 1  # an opening timestamp: its pair, or the end
        latest = next((token for token in reversed(history[begin:step]) if token >= first), None)
        return (first, latest + 1, 0, 0, 1) if latest is not None else (0, 0, 0, 0, 1)

    def _normalized(self, tokens: list[int], score: float) -> _Hypothesis:
        length = len(tokens) ** self._length_penalty  # 0 ** 0 is 1, as in C++
        return _Hypothesis(tokens, score / length if length else float("-inf"))

    def greedy(
        self, cache: _Cache, copies: int, best: bool, top_k: int, temperature: float
    ) -> tuple[list[list[_Hypothesis]], list[float] | None]:
        """One hypothesis per row, `copies` rows per item (sampled several times with
        `num_hypotheses`), each item's best first; and the no-speech probabilities where
        `<|startoftranscript|>` was the start token."""
        import torch

        eot = self._rules.eot
        items = [item for item in range(len(self._requests)) for _ in range(copies)]
        cache = cache.select(items if cache.own else [], items, 1)
        alive = list(range(len(items)))
        inputs = [self._requests[item].start for item in items]
        tokens: list[list[int]] = [[] for _ in items]
        scores = [0.0] * len(items)
        done: dict[int, _Hypothesis] = {}
        first: list[float] | None = None
        for step in range(self._budget):
            raw, processed, cache = self._step(cache, inputs, [items[row] for row in alive],
                                               [tokens[row] for row in alive], step)  # fmt: skip
            if step == 0 and self._no_speech is not None:
                first = self._no_speech(raw)[::copies]
            log_probs = torch.log_softmax(processed, dim=-1)
            chosen = log_probs.argmax(dim=-1) if best else _sample(log_probs, top_k, temperature)
            picked = log_probs.gather(1, chosen.unsqueeze(1)).squeeze(1)
            kept: list[int] = []
            inputs = []
            for position, (row, drawn, drawn_score) in enumerate(
                zip(alive, chosen.tolist(), picked.tolist(), strict=True)
            ):
                forced = self._forced(items[row], step)
                token, score = ((self._requests[items[row]].prefix[step], 0.0) if forced
                                else (drawn, drawn_score))  # fmt: skip
                if token != eot:
                    tokens[row].append(token)
                scores[row] += score
                if (token == eot and not forced) or step + 1 == self._budget:
                    done[row] = self._normalized(tokens[row], scores[row])
                else:
                    kept.append(position)
                    inputs.append(token)
            alive = [alive[position] for position in kept]
            if not alive:
                break
            cache = cache.select(kept, kept, 1)
        found = [sorted((done[row] for row in done if items[row] == item),
                        key=lambda hypothesis: -hypothesis.score)
                 for item in range(len(self._requests))]  # fmt: skip
        return found, first

    def beam(
        self, cache: _Cache, width: int, finished_enough: int, keep: int, early_exit: bool
    ) -> tuple[list[list[_Hypothesis]], list[float] | None]:
        """Beam search of `width` beams per item: of the 2 * `width` best continuations, only
        the first `width` may end; an item is done once `finished_enough` hypotheses ended
        (`beam_size * patience`), or at the budget; its best `keep` are returned. With
        `early_exit` (no length penalty, so a longer hypothesis can only score lower), it is
        done once the best beam ended and `keep` hypotheses have."""
        import torch

        eot = self._rules.eot
        any_prefix = any(request.prefix for request in self._requests)
        alive = list(range(len(self._requests)))
        beams: dict[int, list[_Hypothesis]] = {item: [_Hypothesis([], 0.0)] for item in alive}
        finished: dict[int, list[_Hypothesis]] = {item: [] for item in alive}
        found: dict[int, list[_Hypothesis]] = {}
        first: list[float] | None = None
        cross_of = {item: item for item in alive}
        best_ended: set[int] = set()
        for step in range(self._budget):
            items = [item for item in alive for _ in beams[item]]
            histories = [hypothesis.tokens for item in alive for hypothesis in beams[item]]
            inputs = [history[-1] if history else self._requests[item].start
                      for item, history in zip(items, histories, strict=True)]  # fmt: skip
            raw, processed, cache = self._step(cache, inputs, items, histories, step)
            if step == 0 and self._no_speech is not None:
                first = self._no_speech(raw)
            log_probs = torch.log_softmax(processed, dim=-1)
            rows_kept: list[int] = []
            items_kept: list[int] = []
            row = 0
            best = self._best_continuations(log_probs, [beams[item] for item in alive], width)
            for position, item in enumerate(list(alive)):
                own = len(beams[item])
                tokens, scores, origins = self._candidates(
                    item, step, best[position], log_probs.shape[1], width, any_prefix
                )
                chosen = self._chosen(item, step, tokens, scores, origins, beams, finished, width)
                if tokens[0] == eot and not self._forced(item, step):
                    best_ended.add(item)
                enough = ((item in best_ended and len(finished[item]) >= keep) if early_exit
                          else len(finished[item]) >= finished_enough)  # fmt: skip
                if step + 1 == self._budget or enough:
                    ranked = [self._normalized(hypothesis.tokens, hypothesis.score)
                              for hypothesis in finished[item]]  # fmt: skip
                    found[item] = sorted(ranked, key=lambda hypothesis: -hypothesis.score)[:keep]
                    alive.remove(item)
                else:
                    beams[item] = [
                        _Hypothesis([*beams[item][origins[candidate]].tokens, tokens[candidate]],
                                    scores[candidate])
                        for candidate in chosen
                    ]  # fmt: skip
                    rows_kept.extend(row + origins[candidate] for candidate in chosen)
                    items_kept.append(item)
                row += own
            if not alive:
                break
            cache = cache.select(rows_kept, [cross_of[item] for item in items_kept], width)
            cross_of = {item: position for position, item in enumerate(items_kept)}
        return [found[item] for item in range(len(self._requests))], first

    @staticmethod
    def _best_continuations(
        log_probs: torch.Tensor, beams: list[list[_Hypothesis]], width: int
    ) -> list[tuple[list[float], list[int]]]:
        """Each item's 2 * `width` best continuations over all its beams (summed
        log-probabilities, and positions in its beams' vocabularies laid end to end), in one
        top-k and one transfer for the batch: every item has as many beams as the others."""
        import torch

        cumulative = torch.tensor([hypothesis.score for own in beams for hypothesis in own],
                                  device=log_probs.device)  # fmt: skip
        totals = (log_probs + cumulative.unsqueeze(1)).view(len(beams), -1)
        values, indices = torch.topk(totals, 2 * width, dim=-1)
        return list(zip(values.tolist(), indices.tolist(), strict=True))

    def _candidates(
        self,
        item: int,
        step: int,
        best: tuple[list[float], list[int]],
        vocabulary: int,
        width: int,
        any_prefix: bool,
    ) -> tuple[list[int], list[float], list[int]]:
        """The item's best continuations as tokens, summed log-probabilities, and the beam
        each continues. A forced step continues the first beam with the prefix's token at no
        cost; at the first free step after a prefix only the best continuation may end."""
        scores, flat = list(best[0]), best[1]
        origins = [index // vocabulary for index in flat]
        tokens = [index % vocabulary for index in flat]
        prefix = self._requests[item].prefix
        count = 2 * width
        if any_prefix and step < len(prefix):
            return [prefix[step]] * count, [0.0] + [-1e10] * (count - 1), [0] * count
        if any_prefix and step == len(prefix):
            for candidate in range(1, count):
                if tokens[candidate] == self._rules.eot:
                    tokens[candidate], scores[candidate] = 0, -1e10
        return tokens, scores, origins

    def _chosen(
        self,
        item: int,
        step: int,
        tokens: list[int],
        scores: list[float],
        origins: list[int],
        beams: dict[int, list[_Hypothesis]],
        finished: dict[int, list[_Hypothesis]],
        width: int,
    ) -> list[int]:
        """The candidates that go on as the item's beams; those of the first `width` that end
        (EOT, or the budget) join `finished`, their place taken by the next candidate
        that does not end."""
        eot = self._rules.eot
        reserve = width
        chosen: list[int] = []
        for candidate in range(width):
            taken = candidate
            ends = tokens[candidate] == eot and not self._forced(item, step)
            if ends or step + 1 == self._budget:
                history = beams[item][origins[candidate]].tokens
                kept = history if tokens[candidate] == eot else [*history, tokens[candidate]]
                finished[item].append(_Hypothesis(kept, scores[candidate]))
                for spare in range(reserve, 2 * width):
                    if tokens[spare] != eot:
                        taken, reserve = spare, spare + 1
                        break
            chosen.append(taken)
        return chosen


def _sample(log_probs: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """One token per row drawn from the `top_k` likeliest (all with 0), sharpened or
    flattened by `temperature`, as CTranslate2's random sampler draws."""
    import torch

    values, ids = (torch.topk(log_probs, top_k, dim=-1) if top_k > 0
                   else (log_probs, None))  # fmt: skip
    drawn = torch.multinomial(torch.softmax(values / temperature, dim=-1), 1).squeeze(1)
    return drawn if ids is None else ids.gather(1, drawn.unsqueeze(1)).squeeze(1)


def _alignment_matrix(heads: torch.Tensor, width: int) -> torch.Tensor:
    """Heads [heads, tokens, frames] normalized along the tokens (no epsilon), median-filtered
    along the frames over `width // 2` on each side (reflected edges), averaged."""
    from torch.nn import functional

    mean = heads.mean(dim=-2, keepdim=True)
    variance = ((heads * heads).mean(dim=-2, keepdim=True) - mean * mean).clamp(min=0)
    heads = (heads - mean) / variance.sqrt()
    reach = width // 2
    if reach and heads.shape[-1] > reach:
        padded = functional.pad(heads, (reach, reach), mode="reflect")
        heads = padded.unfold(-1, 2 * reach + 1, 1).kthvalue(reach + 1, dim=-1).values
    matrix: torch.Tensor = heads.mean(dim=0)
    return matrix


def negative_dtw(matrix: np.ndarray) -> list[tuple[int, int]]:
    """The monotonic path through `matrix` [tokens, frames] that collects the most of it,
    as (token row, frame) pairs from (0, 0) to the last of each. Cells are filled an
    anti-diagonal at a time, since each depends only on the one before; ties go to the
    left neighbour, as in CTranslate2 and openai-whisper."""
    rows, columns = matrix.shape
    cost = np.full((rows + 1, columns + 1), np.inf, dtype=np.float32)
    cost[0, 0] = 0
    trace = np.full((rows + 1, columns + 1), -1, dtype=np.int8)
    for diagonal in range(2, rows + columns + 1):
        i = np.arange(max(1, diagonal - columns), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        diagonal_cost, up, left = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        step = np.where((diagonal_cost < up) & (diagonal_cost < left), 0,
                        np.where((up < diagonal_cost) & (up < left), 1, 2))  # fmt: skip
        best = np.choose(step, [diagonal_cost, up, left])
        cost[i, j] = best - matrix[i - 1, j - 1]
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = rows, columns
    path: list[tuple[int, int]] = []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    return path[::-1]


def faster_whisper_model(folder: Path, device: str, dtype: str, cpu_threads: int) -> Any:
    """faster-whisper's `WhisperModel` running on this engine: what its constructor sets up
    around CTranslate2 (tokenizer, feature extractor, timing constants), with `TorchWhisper`
    where it would load CTranslate2. Written against faster-whisper 1.2; the test of the
    engine through the transcript stage fails if a release changes what it reads.
    """
    import tokenizers
    import torch
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.utils import get_logger

    class OnTorch(WhisperModel):  # type: ignore[misc]
        def __init__(self) -> None:  # faster-whisper's own would load CTranslate2
            self.logger = get_logger()
            modules = load_modules(folder, device, dtype)
            self.hf_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            rules = token_rules(folder, self.hf_tokenizer, modules.config.decoder_layers,
                                modules.config.decoder_attention_heads)  # fmt: skip
            self.model = TorchWhisper(modules, rules, device)
            self.feat_kwargs = self._get_feature_kwargs(str(folder))
            self.feature_extractor = FeatureExtractor(**self.feat_kwargs)
            self.input_stride = 2
            self.num_samples_per_token = self.feature_extractor.hop_length * self.input_stride
            self.frames_per_second = (self.feature_extractor.sampling_rate
                                      // self.feature_extractor.hop_length)  # fmt: skip
            self.tokens_per_second = (
                self.feature_extractor.sampling_rate // self.num_samples_per_token
            )
            self.time_precision = 0.02
            self.max_length = 448

        def encode(self, features: np.ndarray) -> Any:
            return self.model.encode(features)

    if cpu_threads > 0:  # process-wide; the GPU engine's CPU work (timing, DTW) counts too
        torch.set_num_threads(cpu_threads)
    return OnTorch()
