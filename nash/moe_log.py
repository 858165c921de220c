"""
Mixture-of-experts bookkeeping for train.py's log, kept out of the generic loop: the load-balancing loss (which the
model adds to the language-model loss; the log shows the two apart) and each layer's share of assignments per expert,
averaged over the steps since the last log line. A dense model (n_experts=0) makes every call here a no-op.
"""
import torch


class ExpertLog:
    def __init__(self, model, device):
        self.model, self.on = model, bool(model.config.n_experts)
        self.aux, self.load = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, micro_steps):
        """After a micro-step's forward: returns the load-balancing part of its loss (to take out of the logged loss)."""
        if not self.on:
            return 0.0
        aux = self.model.moe_aux_loss().detach() / micro_steps
        self.aux, self.load = self.aux + aux, self.load + self.model.expert_loads() / micro_steps
        return self.model.config.moe_aux_loss_coef * aux

    def sums(self):
        """The running sums, for DDP's all-reduce (in place) before a log line."""
        return (self.aux, self.load) if self.on else ()

    def metrics(self, steps):
        """{aux_loss, expert_load} per step since the last call (nothing for a dense model), then starts over."""
        if not self.on:
            return {}
        metrics = {"aux_loss": self.aux.item() / steps,
                   "expert_load": [[round(f, 4) for f in layer] for layer in (self.load / steps).tolist()]}
        self.aux, self.load = torch.zeros_like(self.aux), torch.zeros_like(self.aux)
        return metrics

    @staticmethod
    def describe(metrics):
        """The log line's fragment: the mean aux loss and the busiest expert's share."""
        if not metrics:
            return ""
        return f" | aux {metrics['aux_loss']:.4f}, busiest expert {max(map(max, metrics['expert_load'])):.3f}"
