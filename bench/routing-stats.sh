#!/usr/bin/env bash
# Routing statistics of a model on the domain prompts, from the model's own decoding:
# moe-run --prompts records a routing trace (every prompt token through the model, plus
# N_PREDICT greedy tokens per prompt), then trace-stats and trace-replay measure
#   lookahead_recall_d1, lookahead_recall_d2  recall@k of the router lookahead at distance
#                                1 and 2, over all layers (trace-stats "lookahead")
#   previous_token_reuse         share of a token's experts the previous token also chose
#   domain_top_quarter_share     share of a domain's routings taken by its n_expert/4 most
#                                chosen experts per layer, mean over domains and layers
#   lru_over_belady_<B>          LRU's demand misses over Belady's optimum with a per-layer
#                                cache of B of each layer's experts
# and, shown but not compared, domain_divergence_from_all (trace-stats "domains").
# With a reference model (default: the bundled tinymoe model; "none" for no comparison) it
# measures both and prints model/reference per statistic and whether each lies within
# TOLERANCE (default 0.10) of 1. Prints one JSON object.
#
#   bench/routing-stats.sh MODEL [REFERENCE|none]
#   env: PROMPTS (default shared/models/traces/domain-prompts.jsonl), N_PREDICT (0),
#        BUDGETS ("37.5%,50%,75%"; at 25% the bundled model's per-layer cache holds exactly
#        one token's 4 experts, so LRU and Belady tie), THREADS (2), TRACE_DIR (keep traces
#        there), TOLERANCE (0.10)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
model=${1:?usage: routing-stats.sh MODEL [REFERENCE|none]}
shared=${MOED_SHARED_MODELS_DIR:-$here/../shared/models}
reference=${2:-$here/models/tinymoe-qwen3moe-Q4_K_M.gguf}
prompts=${PROMPTS:-$shared/traces/domain-prompts.jsonl}
tools=${MOED_TOOLS_DIR:-$here/build/tools}
budgets=${BUDGETS:-37.5%,50%,75%}
work=${TRACE_DIR:-$(mktemp -d)}
[ -n "${TRACE_DIR:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

# measure MODEL NAME: writes NAME.stats.json and NAME.replay.json under $work.
measure() {
  local m=$1 name=$2
  "$tools/moe-run" -m "$m" --prompts "$prompts" --trace "$work/$name.trace" -n "${N_PREDICT:-0}" \
    --lookahead 2 -t "${THREADS:-2}" > "$work/$name.run.json"
  "$tools/trace-stats" "$work/$name.trace" > "$work/$name.stats.json"
  "$tools/trace-replay" --policies lru,belady --scope per-layer --budget "$budgets" "$work/$name.trace" \
    > "$work/$name.replay.json"
}

measure "$model" model
if [ "$reference" != none ]; then measure "$reference" reference; fi

python3 - "$work" "$model" "$reference" "${TOLERANCE:-0.10}" <<'PY'
import json, sys
work, model, reference, tolerance = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

def stats(name, path):
    s = json.load(open(f"{work}/{name}.stats.json"))
    r = json.load(open(f"{work}/{name}.replay.json"))
    run = json.load(open(f"{work}/{name}.run.json"))
    la = {d["distance"]: d["recall_at_k"] for d in s["lookahead"]}
    out = {
        "model": path,
        "n_layer": s["n_layer"], "n_expert": s["n_expert"], "n_expert_used": s["n_expert_used"],
        "prompts": run["prompts"], "tokens": run["prompt_tokens"] + run["generated_tokens"],
        "statistics": {
            "lookahead_recall_d1": la.get(1),
            "lookahead_recall_d2": la.get(2),
            "previous_token_reuse": s["previous_token"]["recall_at_k"],
            "domain_top_quarter_share": s["domains"]["top_quarter_share"],
        },
        "shown": {"domain_divergence_from_all": s["domains"]["divergence_from_all"]},
    }
    for run in r["runs"]:
        p = run["policies"]
        out["statistics"]["lru_over_belady_" + run["budget"]] = (
            p["lru"]["demand_misses"] / p["belady"]["demand_misses"] if p["belady"]["demand_misses"] else None)
        out["shown"]["lru_miss_rate_" + run["budget"]] = p["lru"]["miss_rate"]
    return out

def r4(x):
    return None if x is None else round(x, 4)

result = {"model": stats("model", model)}
if reference != "none":
    result["reference"] = stats("reference", reference)
    ratios, within = {}, {}
    for k, v in result["model"]["statistics"].items():
        ref = result["reference"]["statistics"].get(k)
        ratios[k] = r4(v / ref) if v is not None and ref else None
        within[k] = ratios[k] is not None and abs(ratios[k] - 1.0) <= tolerance
    result["ratio"] = ratios
    result["within_tolerance"] = within
    result["all_within_tolerance"] = all(within.values())
for side in ("model", "reference"):
    if side in result:
        for group in ("statistics", "shown"):
            result[side][group] = {k: r4(v) for k, v in result[side][group].items()}
print(json.dumps(result, indent=2))
PY
