"""
Mixture-of-Experts feed-forward layer: a router sends each token to experts_top_k of n_experts MLPs and
adds their outputs, weighted by the router. model.py puts it in place of a block's MLP when n_experts > 0.

- Routing (Mixtral, Jiang et al. 2024, arXiv:2401.04088): softmax over all experts' logits, in float32
  (a bf16 softmax makes near ties flip between steps), keep the top k, renormalise their weights to sum
  to 1. With k = 1 the weight is the raw probability instead, as in the Switch Transformer (Fedus et
  al. 2021, arXiv:2101.03961): renormalised, it would always be 1 and the router would learn nothing
  from the language-model loss.
- Dropless: every token gets its k experts (no capacity factor, no dropped tokens, as Mixtral and
  MegaBlocks). So a token's output never depends on the other tokens of the batch, which is what keeps
  KV-cache generation equal to a full recompute.
- Batched: the (token, slot) assignments are sorted by expert, gathered in one indexing, each expert
  runs once on its contiguous slice (a loop over experts, never over tokens), and the results go back
  to their tokens through the inverse permutation, a deterministic gather (index_add_ would use atomic
  adds on a GPU and make runs differ).
- Load balancing: the Switch loss n_experts * sum_i f_i * P_i, with f_i the fraction of the
  assignments that went to expert i and P_i the mean router probability of expert i. It is 1 when the
  load is uniform, larger when skewed. (Hugging Face's Mixtral counts f over tokens, not assignments,
  so its value is top_k times ours.) Each forward leaves it in `aux_loss` (attached to the graph) and
  the load f in `load` (detached) for the training script to add and log.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MoE(nn.Module):

    def __init__(self, config, make_expert):
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.experts_top_k
        self.router = nn.Linear(config.d_model, self.n_experts, bias=False)
        self.experts = nn.ModuleList([make_expert(config) for _ in range(self.n_experts)])
        self.aux_loss = self.load = None  # set by each forward

    def route(self, x):
        """x (N, C) -> router probabilities (N, E) float32, and each token's top_k weights and experts (N, k)."""
        with torch.autocast(x.device.type, enabled=False):  # float32 even under AMP
            probs = F.linear(x.float(), self.router.weight.float()).softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)
        probs, weights, experts = self.route(x)
        flat = experts.flatten()  # (N * k,) the expert of each assignment, token-major
        order = flat.argsort(stable=True)  # assignments grouped by expert
        counts = torch.bincount(flat, minlength=self.n_experts)
        grouped = x[order // self.top_k]  # the token of each assignment, in expert order
        # every expert runs, even on zero tokens: its weights then get a zero gradient rather than none,
        # which DDP needs (it waits for a gradient from every parameter)
        out = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, grouped.split(counts.tolist()))])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = out[inverse].view(B * T, self.top_k, C)  # back to token-major: (token, slot)
        y = (out * weights.unsqueeze(-1).to(out.dtype)).sum(dim=1)

        self.load = counts.float() / flat.numel()
        self.aux_loss = self.n_experts * (self.load * probs.mean(dim=0)).sum()
        self.load = self.load.detach()
        return y.view(B, T, C)


def idle_expert_params(model, matrices_only=False):
    """Parameters of the experts a token is not routed to, over all layers: total - active (0 if dense).
    matrices_only: count only the 2-D weights, the ones that cost matmul FLOPs."""
    cfg = model.config
    if not cfg.n_experts:
        return 0
    expert = model.transformer.h[0].mlp.experts[0]
    per_expert = sum(p.numel() for p in expert.parameters() if p.dim() == 2 or not matrices_only)
    return cfg.n_layers * (cfg.n_experts - cfg.experts_top_k) * per_expert
