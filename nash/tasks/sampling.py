"""
Many sampled replies per question (evaluate.py --num_samples=N): what they add up to, as pure functions.

- pass@k: the chance that at least one of k replies drawn from the N is correct, with Chen et al. 2021's unbiased
  estimator 1 - C(N-c, k) / C(N, k) (c of the N correct), averaged over questions. pass@1 is then the mean share of
  correct samples. The binomials overflow floats for large N, so it is computed as their ratio's product form,
  1 - prod_{i=N-c+1..N} (1 - k/i), as the Codex paper's own code does.
- maj@N: self-consistency (Wang et al. 2022): the answers extracted from the N replies (GSM8K's and arith's last
  number, the check's "predicted") vote; a reply with no answer does not vote; the question counts as solved when
  the winning answer is right. Ties go to the answer that a reply gave first (the lowest sample index), so the
  vote is deterministic and does not depend on how answers sort.
- best-of-N: the reply a verifier scores highest (Cobbe et al. 2021); ties go to the first such reply.
- logprob-of-N: the reply the generator itself finds likeliest, by its mean token log-probability (free: no
  training; on arith it picked 49.5% where a random reply was right 33.6% of the time and the vote 40.5%).
- combined-of-N: the reply with the best sum of its within-question ranks by the verifier and by the log-prob.

Each metric is a per-question value, so each gets lm-eval's standard error over questions (base.stderr).
"""
from collections import Counter
from math import prod

from nash.tasks.base import stderr


def pass_at_k(n, c, k):
    """Unbiased pass@k of one question with c correct among n samples (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks(n):
    """The k reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out + ([n] if out[-1] != n else [])


def majority(answers):
    """Index of the first reply holding the most common answer (None: no answer, no vote); None when no reply
    has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(j for j, a in enumerate(answers) if a is not None and counts[a] == top)


def best_of_n(scores):
    """Index of the highest score, the first on ties."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))


def ranks(scores):
    """Each score's rank among its question's (0 the lowest; ties share their mean rank)."""
    return [sum(t < v for t in scores) + (sum(t == v for t in scores) - 1) / 2 for v in scores]


def summarize_samples(samples, metric, scores=None, logprobs=None):
    """samples[i]: question i's replies, each the task's check ({metric: 0/1, "predicted"?: its answer});
    scores[i][j]: a verifier's score of reply j (or None); logprobs[i][j]: the generator's mean token log-prob of it
    (or None). Returns {"num_samples", "n", "pass@k" and "pass@k_stderr" for each k, "maj@N" (where the check
    extracts answers), "best_of_N" (with scores), "logprob_of_N" (with logprobs), "combined_of_N" (with both)}, and
    "per_question": each question's value of each, for paired comparisons."""
    n = len(samples[0])
    if any(len(s) != n for s in samples):
        raise ValueError("every question needs the same number of samples")
    out = {"num_samples": n, "n": len(samples)}

    per_question = {}

    def add(name, values):
        out[name], out[name + "_stderr"] = sum(values) / len(values), stderr(values)
        per_question[name] = values

    correct = [round(sum(s[metric] for s in replies)) for replies in samples]  # (checks give floats, 0.0 or 1.0)
    for k in ks(n):
        add(f"pass@{k}", [pass_at_k(n, c, k) for c in correct])
    if all("predicted" in s for replies in samples for s in replies):
        votes = [majority([s["predicted"] for s in replies]) for replies in samples]
        add(f"maj@{n}", [0.0 if j is None else replies[j][metric] for j, replies in zip(votes, samples)])
    if scores is not None:
        add(f"best_of_{n}", [replies[best_of_n(s)][metric] for replies, s in zip(samples, scores)])
    if logprobs is not None:
        add(f"logprob_of_{n}", [replies[best_of_n(s)][metric] for replies, s in zip(samples, logprobs)])
    if scores is not None and logprobs is not None:
        both = [[a + b for a, b in zip(ranks(s), ranks(lp))] for s, lp in zip(scores, logprobs)]
        add(f"combined_of_{n}", [replies[best_of_n(s)][metric] for replies, s in zip(samples, both)])
    out["per_question"] = per_question
    return out
