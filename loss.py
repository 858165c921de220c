"""
The training loss, the lm_head and cross-entropy fused, a chunk of rows at a time, so the (B, T, vocab)
logits never exist in full. GPT.forward uses it when it is not asked for the logits (train.py's path);
bench.py measures it against the plain F.cross_entropy path. Only torch is needed.
"""
import torch


def chunked_cross_entropy(x, weight, targets, chunk_rows=None):
    """Mean cross-entropy of the logits x @ weight.T against targets (-1 = no loss), without ever holding
    the whole logits: x (..., C) hidden states, weight (V, C) the head, targets (...). Equal to
    F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-1) (0 when every target is -1).

    chunk_rows: rows per chunk; default 128 on CPU (a chunk of logits, 128 x 50257 float32 = 26 MB,
    stays in the last-level cache, which is what makes this faster than the plain path there; measured)
    and 1024 on a GPU (fewer kernel launches; still 1/12 of GPT-2's training logits; not measured)."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    rows = chunk_rows or (128 if x.device.type == "cpu" else 1024)
    # under autocast, do the matmuls in its dtype ourselves (autocast leaves in-place ops alone)
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(x.to(dtype), weight.to(dtype), targets, rows,
                                         torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss and its gradients in one pass over the chunks. The gradient of the summed cross-entropy
    with respect to a row's logits is softmax - onehot(target), known as soon as that row's logits
    are: so the forward computes each chunk's logits, adds its loss, turns the logits into their
    gradient in place and multiplies it into dx and dweight right away; backward only scales them by
    the incoming gradient / n. The three matmuls are the ones a plain forward + backward does (no
    recomputation, unlike checkpointing), and memory holds one chunk of logits instead of the
    (B*T, V) logits, their log-softmax and their gradient. The cost: the gradients are computed even
    if backward is never called, hence `needs_grad` (False under torch.no_grad).

    16-bit: the 1/n (and a GradScaler's scale) are applied in float32 in backward, so the logits'
    gradient, in [-1, 1], needs no loss scaling to stay out of float16's underflow; dx and dweight
    are summed in float32. float16 overflows at 65504: a chunk's dweight entry is at most
    rows * max|x|, so x enters that matmul divided by 16 (exact), undone in backward."""

    @staticmethod
    def forward(ctx, x, weight, targets, rows, needs_grad):
        keep = targets != -1
        n = keep.sum().clamp(min=1)  # "mean" over the kept rows; 0 (not NaN) when there are none
        safe = torch.where(keep, targets, 0)[:, None]  # any valid index; those rows are masked out below
        x_scale = 1 / 16 if x.dtype == torch.float16 else 1.0
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = torch.zeros_like(x, dtype=torch.float32) if needs_grad else None
        dw = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        for i in range(0, x.size(0), rows):
            xc, kc, tc = x[i:i + rows], keep[i:i + rows], safe[i:i + rows]
            logits = (xc @ weight.t()).float()  # (rows, V), the only logits that exist at any time
            lse = torch.logsumexp(logits, dim=-1)
            loss += ((lse - logits.gather(1, tc).squeeze(1)) * kc).sum()
            if needs_grad:
                # softmax of the kept rows in one pass, exp(logit - lse + log keep); ignored rows: exp(-inf) = 0
                grad = logits.sub_((lse - kc.float().log())[:, None]).exp_()
                grad.scatter_add_(1, tc, -kc[:, None].float())  # minus the one-hot target
                grad = grad.to(x.dtype)
                dx[i:i + rows] = grad @ weight
                if x.dtype == torch.float32:
                    dw.addmm_(grad.t(), xc)
                else:  # a 16-bit matmul per chunk, summed in float32
                    dw += grad.t() @ (xc * x_scale)
        ctx.save_for_backward(dx, dw, n)
        ctx.x_scale, ctx.dtypes = x_scale, (x.dtype, weight.dtype)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dw, n = ctx.saved_tensors
        scale = grad_loss.float() / n
        return ((dx * scale).to(ctx.dtypes[0]), (dw * (scale / ctx.x_scale)).to(ctx.dtypes[1]),
                None, None, None)
