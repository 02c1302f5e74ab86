"""Time loading SmolLM2-135M from its GGUF file and greedy decoding at several batch sizes.

Loading is timed twice, cold and warm (the second read finds the file in the page cache).
Decoding runs `models.generate.greedy_generate` without an EOS, so every row produces
exactly `--new-tokens` tokens. A warm-up call compiles the prefill and the decoding step
first, so the timed rounds measure decoding alone; each batch size reports the median
round. Tokens per second counts generated tokens of all rows.

Run: `python -m benchmarks.llama` (`--help` for the options).
"""

import argparse
import platform
import statistics
import time

import jax

from models import llama_io
from models.generate import greedy_generate
from models.llama import Llama

PROMPT = "The capital of France is"


def time_load():
    """Load SmolLM2-135M twice; return the model and the two load times in seconds."""
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        config, params, tokenizer = llama_io.load_smollm2()
        seconds.append(time.perf_counter() - started)
    return (config, params, tokenizer), seconds


def time_decoding(model, params, prompt, *, batch, new_tokens, rounds):
    """Return the median seconds of greedy decoding `new_tokens` tokens for `batch` copies of prompt."""
    prompts = [prompt] * batch
    greedy_generate(model, params, prompts, max_new_tokens=new_tokens, eos_id=None)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        greedy_generate(model, params, prompts, max_new_tokens=new_tokens, eos_id=None)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    args = parser.parse_args(argv)

    (config, params, tokenizer), load_seconds = time_load()
    model = Llama(config)
    prompt = tokenizer.encode(PROMPT)
    print(f"machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), JAX {jax.__version__}")
    print(f"load SmolLM2-135M (GGUF Q4_1 -> float32): cold {load_seconds[0]:.1f} s, warm {load_seconds[1]:.1f} s")
    print()
    print("| batch | new tokens per row | seconds | tokens/s |")
    print("|---|---|---|---|")
    for batch in args.batch_sizes:
        seconds = time_decoding(model, params, prompt, batch=batch, new_tokens=args.new_tokens, rounds=args.rounds)
        print(f"| {batch} | {args.new_tokens} | {seconds:.2f} | {batch * args.new_tokens / seconds:.1f} |")


if __name__ == "__main__":
    main()
