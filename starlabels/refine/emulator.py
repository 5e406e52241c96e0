"""The spectral emulator: labels → normalised flux on the experiment's grid, with a per-pixel
intrinsic scatter s²_λ.

Both forms are linear read-outs of label features, flux = φ(x) W + b, with x the labels scaled
to [-1, 1] over the training range:

* ``payne`` (The Payne, Ting et al. 2019; trained on observed survey spectra as DD-Payne):
  φ is a small MLP (SiLU) ending in ``n_basis`` coefficients, and W a spectral basis. The basis
  starts as the quadratic model's label directions plus the leading principal components of
  what it leaves, so the weak, element-specific directions ([Mg/Fe], [Al/Fe] lines) are in it
  from the start: principal components of the flux alone miss them (measured: 70–86 % of the
  simulator's ∂flux/∂[Al/Fe] fell outside a 48-component PCA basis). A narrow read-out is also
  what makes fitting fast: the Jacobian costs n_pixels × n_basis per label.
* ``quadratic`` (The Cannon, Ness et al. 2015): φ = the labels and their pairwise products, W
  fitted per pixel by weighted least squares.

s²_λ is fitted with the model (alternating, as The Cannon does; for ``payne`` the last epochs
minimise the Gaussian likelihood of both together), so a fit's χ² and formal errors include the
model's own scatter.

Catalogue labels are noisy, and a model trained on them responds too weakly to the labels
(regression dilution; measured on demo_ges: ∂flux/∂[Al/Fe] at 0.2–0.6 of the simulator's).
``label_rounds`` > 0 treats the training stars' labels as unknowns with the catalogue values as
a Gaussian prior (errors-in-variables): each round fits every training star's labels with the
current model (:mod:`starlabels.refine.fit`) and trains the model again on them.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

Log = Callable[[str], Any]

KINDS = ("payne", "quadratic")
#: s²_λ is searched between these (flux units squared): from no scatter to a flux-sized one
S2_LIMITS = (1e-12, 1.0)


class Emulator(nn.Module):
    """Normalised flux from scaled labels: ``readout(features(x))`` plus ``log_s2`` per pixel.

    Labels enter scaled, x = (label − centre) / half-range of the training labels
    (:meth:`scale`, :meth:`unscale`); subclasses give the features and their derivatives.
    """

    kind = ""

    def __init__(self, n_labels: int, n_pixels: int, n_features: int,
                 label_low: Sequence[float], label_high: Sequence[float]) -> None:
        super().__init__()
        low = torch.as_tensor(np.asarray(label_low, dtype=np.float64))
        high = torch.as_tensor(np.asarray(label_high, dtype=np.float64))
        if low.numel() != n_labels or high.numel() != n_labels or not bool((high > low).all()):
            raise ValueError(f"label range must give {n_labels} labels with high > low; got "
                             f"{low.tolist()} .. {high.tolist()}")
        self.n_labels, self.n_pixels = int(n_labels), int(n_pixels)
        self.register_buffer("label_centre", ((low + high) / 2).float())
        self.register_buffer("label_half_range", ((high - low) / 2).float())
        self.readout = nn.Linear(n_features, n_pixels)
        self.log_s2 = nn.Parameter(torch.full((n_pixels,), math.log(1e-6)))
        # which read-out weights may be non-zero: a censored label's features act only on its
        # element's pixels
        self.register_buffer("readout_mask", torch.ones((n_pixels, n_features)))

    def apply_mask(self) -> None:
        """Zero the read-out where :attr:`readout_mask` forbids it (after every update)."""
        with torch.no_grad():
            self.readout.weight.mul_(self.readout_mask)

    # -- labels
    def scale(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels - self.label_centre) / self.label_half_range

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.label_half_range + self.label_centre

    # -- model
    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features_and_tangents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """φ(x) (B, F) and ∂φ/∂x (B, K, F)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))

    def flux_and_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and its Jacobian with respect to the scaled labels (B, K, P), in one
        matrix product: the features and their K tangents go through the read-out together."""
        phi, tangents = self.features_and_tangents(x)
        stacked = torch.cat([phi[:, None, :], tangents], dim=1) @ self.readout.weight.T
        return stacked[:, 0] + self.readout.bias, stacked[:, 1:]

    @property
    def s2(self) -> torch.Tensor:
        return self.log_s2.exp()

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError


class PayneEmulator(Emulator):
    """Blocks of (labels an MLP sees → coefficients → a spectral basis on some pixels).

    ``blocks``: ``[{"labels": [label indices], "n_basis": R_b}, ...]``; ``pixel_masks`` (one
    boolean (P,) array or None per block) confine a block's basis to those pixels. A censored
    abundance ratio (The Cannon 2, Casey et al. 2016) is seen only by its own block, whose basis
    lives on its element's lines: the emulator cannot make it move other pixels, where any
    response learned from ~10³ noisy training stars would be spurious (measured: an uncensored
    model's ∂flux/∂[Al/Fe] summed over the spectrum was 2–10× the simulator's, and the fits
    believed it).
    """

    kind = "payne"

    def __init__(self, n_labels: int, n_pixels: int, label_low: Sequence[float],
                 label_high: Sequence[float], hidden: Sequence[int],
                 blocks: Sequence[Mapping[str, Any]],
                 pixel_masks: Sequence[np.ndarray | None] | None = None) -> None:
        widths = [int(b["n_basis"]) for b in blocks]
        super().__init__(n_labels, n_pixels, sum(widths), label_low, label_high)
        self.hidden = [int(h) for h in hidden]
        self.blocks = [{"labels": [int(i) for i in b["labels"]], "n_basis": int(b["n_basis"])}
                       for b in blocks]
        self.mlps = nn.ModuleList()
        for block in self.blocks:
            dims = [len(block["labels"]), *self.hidden]
            layers = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
            self.mlps.append(nn.ModuleList([*layers, nn.Linear(dims[-1], block["n_basis"])]))
        col = 0
        for width, pixels in zip(widths, pixel_masks or [None] * len(widths)):
            if pixels is not None:
                self.readout_mask[:, col:col + width] = torch.as_tensor(
                    np.asarray(pixels, dtype=bool), dtype=torch.float32)[:, None]
            col += width
        self.apply_mask()

    @property
    def n_basis(self) -> int:
        return int(self.readout_mask.shape[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for block, layers in zip(self.blocks, self.mlps):
            h = x[:, block["labels"]]
            for layer in layers[:-1]:
                h = nn.functional.silu(layer(h))
            out.append(layers[-1](h))
        return torch.cat(out, dim=1)

    def features_and_tangents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # forward-mode derivatives carried beside the activations: K tangents cost K narrow
        # matrix products, far less than autograd's K backward passes over the read-out
        b = x.shape[0]
        phis = []
        tangents = torch.zeros((b, x.shape[1], self.n_basis), dtype=x.dtype, device=x.device)
        col = 0
        for block, layers in zip(self.blocks, self.mlps):
            idx = block["labels"]
            h = x[:, idx]
            tan = torch.eye(len(idx), dtype=x.dtype, device=x.device).expand(b, -1, -1)
            for layer in layers[:-1]:
                z = layer(h)
                sig = torch.sigmoid(z)
                h = z * sig
                tan = (tan @ layer.weight.T) * (sig * (1 + z * (1 - sig)))[:, None, :]
            phis.append(layers[-1](h))
            tangents[:, idx, col:col + block["n_basis"]] = tan @ layers[-1].weight.T
            col += block["n_basis"]
        return torch.cat(phis, dim=1), tangents

    def architecture(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "blocks": self.blocks}


class QuadraticEmulator(Emulator):
    """The Cannon's quadratic form: features = labels and their pairwise products."""

    kind = "quadratic"

    def __init__(self, n_labels: int, n_pixels: int, label_low: Sequence[float],
                 label_high: Sequence[float],
                 label_pixels: Mapping[int, np.ndarray] | None = None) -> None:
        k = int(n_labels)
        super().__init__(k, n_pixels, k + k * (k + 1) // 2, label_low, label_high)
        first, second = torch.triu_indices(k, k)
        self.register_buffer("pair_first", first, persistent=False)
        self.register_buffer("pair_second", second, persistent=False)
        # a term with a censored label acts only on that label's pixels
        exps = feature_exponents(k)[1:]
        for label, pixels in (label_pixels or {}).items():
            use = torch.as_tensor(np.asarray(pixels, dtype=bool), dtype=torch.float32)
            self.readout_mask[:, exps[:, int(label)] > 0] *= use[:, None]
        self.apply_mask()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[:, self.pair_first] * x[:, self.pair_second]], dim=1)

    def features_and_tangents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = x.shape
        eye = torch.eye(k, dtype=x.dtype, device=x.device).expand(b, -1, -1)
        # ∂(x_i x_j)/∂x_m = δ_im x_j + δ_jm x_i
        pairs = (eye[:, :, self.pair_first] * x[:, None, self.pair_second]
                 + eye[:, :, self.pair_second] * x[:, None, self.pair_first])
        return self.features(x), torch.cat([eye, pairs], dim=2)

    def architecture(self) -> dict[str, Any]:
        return {}


def build_emulator(kind: str, n_labels: int, n_pixels: int, label_low: Sequence[float],
                   label_high: Sequence[float], architecture: Mapping[str, Any]) -> Emulator:
    if kind == "payne":
        return PayneEmulator(n_labels, n_pixels, label_low, label_high,
                             hidden=architecture["hidden"], blocks=architecture["blocks"],
                             pixel_masks=architecture.get("pixel_masks"))
    if kind == "quadratic":
        return QuadraticEmulator(n_labels, n_pixels, label_low, label_high,
                                 label_pixels=architecture.get("label_pixels"))
    raise ValueError(f"unknown emulator kind {kind!r}; known: {list(KINDS)}")


# ---------------------------------------------------------------- fitting the pieces

def noise_variance(ivar: torch.Tensor) -> torch.Tensor:
    """σ² per pixel; masked pixels (ivar 0) get a huge variance, so they carry no weight."""
    return torch.where(ivar > 0, 1.0 / ivar.clamp_min(1e-30), torch.full_like(ivar, 1e12))


def fit_intrinsic_scatter(residual2: torch.Tensor, variance: torch.Tensor,
                          clip: float, iterations: int = 50) -> torch.Tensor:
    """s²_λ per pixel maximising Π N(r | 0, σ² + s²) over the spectra (bisection in log s²).

    Pixels whose |r| exceeds ``clip`` × sqrt(σ² + s²) (cosmic rays, emission the clean stage
    kept) are left out of their pixel's estimate, so one defect does not widen a line for good.
    """
    lo = torch.full(residual2.shape[1:], math.log(S2_LIMITS[0]), device=residual2.device)
    hi = torch.full_like(lo, math.log(S2_LIMITS[1]))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        total = variance + mid.exp()
        use = (residual2 < clip ** 2 * total) & (variance < 1e11)
        # d log L / d s² ∝ Σ r²/(σ²+s²)² − 1/(σ²+s²): positive → more scatter
        grad = torch.where(use, residual2 / total ** 2 - 1.0 / total, torch.zeros_like(total))
        up = grad.sum(dim=0) > 0
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return ((lo + hi) / 2).exp()


def quadratic_least_squares(features: torch.Tensor, flux: torch.Tensor,
                            weight: torch.Tensor | None, ridge: float,
                            chunk: int = 512) -> torch.Tensor:
    """Per-pixel (weighted) least squares of ``flux`` on [1, features]: (F + 1, P) coefficients,
    the constant first. ``weight`` (N, P) or None (equal weights: one solve for every pixel)."""
    design = torch.cat([torch.ones_like(features[:, :1]), features], dim=1).double()
    n_terms = design.shape[1]
    reg = ridge * torch.eye(n_terms, dtype=torch.float64, device=design.device)
    if weight is None:
        gram = design.T @ design
        return torch.linalg.solve(gram + reg * gram.diagonal().mean(),
                                  design.T @ flux.double()).float()
    out = torch.empty((n_terms, flux.shape[1]), dtype=torch.float32, device=flux.device)
    for start in range(0, flux.shape[1], chunk):
        w = weight[:, start:start + chunk].double()
        gram = torch.einsum("nt,np,nu->ptu", design, w, design)
        rhs = torch.einsum("nt,np->pt", design, w * flux[:, start:start + chunk].double())
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)[:, None, None]
        out[:, start:start + chunk] = torch.linalg.solve(gram + reg * scale, rhs).T.float()
    return out


def feature_exponents(n_labels: int) -> np.ndarray:
    """Exponents (T, K) of the quadratic model's terms: 1, x_k, x_i x_j (i ≤ j)."""
    eye = np.eye(n_labels, dtype=np.int64)
    first, second = np.triu_indices(n_labels)
    return np.vstack([np.zeros((1, n_labels), dtype=np.int64), eye, eye[first] + eye[second]])


def hermite_moments(x: torch.Tensor, variance: torch.Tensor, degree: int) -> torch.Tensor:
    """He_m(x; v) for m = 0..degree, shape (N, K, degree + 1): the unbiased estimates of x_true^m
    from x = x_true + N(0, v) (probabilists' Hermite polynomials, He_{m+1} = x He_m − m v He_{m-1})."""
    out = [torch.ones_like(x), x]
    for m in range(1, degree):
        out.append(x * out[m] - m * variance * out[m - 1])
    return torch.stack(out[:degree + 1], dim=2)


def deconvolved_quadratic_terms(x: torch.Tensor, variance: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per spectrum, the quadratic model's terms v and their products v vᵀ as unbiased
    estimates at the true labels, given noisy labels ``x`` with known error ``variance`` (both
    (N, K), scaled units): (N, T) and (N, T, T).

    Least squares with these in place of v(x) and v(x) v(x)ᵀ ("corrected least squares") gives
    the coefficients of the true labels, not the flattened ones the noisy labels give."""
    exps = torch.as_tensor(feature_exponents(x.shape[1]), device=x.device)
    moments = hermite_moments(x.double(), variance.double(), 4)      # (N, K, 5)
    k_index = torch.arange(x.shape[1], device=x.device)
    terms = moments[:, k_index[None, :], exps].prod(dim=2)            # (N, T)
    pair = exps[:, None, :] + exps[None, :, :]                        # (T, T, K)
    products = moments[:, k_index[None, None, :], pair].prod(dim=3)    # (N, T, T)
    return terms.float(), products.float()


def weighted_normal_solve(terms: torch.Tensor, products: torch.Tensor, flux: torch.Tensor,
                          weight: torch.Tensor, ridge: float, allowed: torch.Tensor | None = None,
                          chunk: int = 256) -> torch.Tensor:
    """Per pixel p: solve (Σ_n w_np G_n + ridge) θ_p = Σ_n w_np v_n y_np, with G_n = ``products``
    and v_n = ``terms``; returns θ (T, P). ``allowed`` (P, T) zeroes the terms a pixel may not
    use (censoring)."""
    n_terms = terms.shape[1]
    out = torch.empty((n_terms, flux.shape[1]), dtype=torch.float32, device=flux.device)
    flat = products.reshape(len(products), -1).double()
    eye = torch.eye(n_terms, dtype=torch.float64, device=flux.device)
    for start in range(0, flux.shape[1], chunk):
        w = weight[:, start:start + chunk].double()
        gram = (w.T @ flat).reshape(-1, n_terms, n_terms)
        rhs = (w * flux[:, start:start + chunk].double()).T @ terms.double()
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)[:, None, None]
        reg = ridge * scale * eye
        if allowed is not None:
            # a forbidden term gets a penalty that pins its coefficient to zero
            banned = 1.0 - allowed[start:start + chunk].double()
            reg = reg + torch.diag_embed(banned) * scale * 1e8
        theta = torch.linalg.solve(gram + reg, rhs).T.float()
        if allowed is not None:
            theta = theta * allowed[start:start + chunk].T
        out[:, start:start + chunk] = theta
    return out


def spectral_basis(model: "PayneEmulator", flux: torch.Tensor, x: torch.Tensor, ridge: float,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean flux (P), basis (R, P)) for the blocks of ``model``, block by block on what the
    earlier ones leave: the quadratic model's directions of the block's own labels first (every
    label for the first block), then principal components, each block orthonormal on its
    pixels."""
    residual = flux.clone()
    mask = model.readout_mask
    mean, rows, col, seen = None, [], 0, set()
    for block in model.blocks:
        width = block["n_basis"]
        pixels = mask[:, col].bool()
        labels = block["labels"]
        own = [i for i, label in enumerate(labels) if label not in seen] if seen else \
            list(range(len(labels)))
        quad = QuadraticEmulator(len(labels), int(pixels.sum()), [-1.0] * len(labels),
                                 [1.0] * len(labels)).to(flux.device)
        terms = quad.features(x[:, labels])
        coef = quadratic_least_squares(terms, residual[:, pixels], None, ridge)
        exps = feature_exponents(len(labels))[1:]
        chosen = torch.as_tensor(exps[:, own].sum(axis=1) > 0, device=flux.device)
        if mean is None:
            mean = torch.zeros(flux.shape[1], device=flux.device)
            mean[pixels] = coef[0]
            residual[:, pixels] -= coef[0]
        directions = coef[1:][chosen]
        residual[:, pixels] -= terms[:, chosen] @ directions
        n_extra = width - directions.shape[0]
        if n_extra < 0:
            raise ValueError(f"a block of {width} basis vectors is smaller than the "
                             f"{directions.shape[0]} quadratic directions of its labels")
        if n_extra:
            torch.manual_seed(seed + col)
            part = residual[:, pixels]
            _, _, v = torch.svd_lowrank(part, q=min(n_extra + 8, *part.shape), niter=3)
            directions = torch.cat([directions, v[:, :n_extra].T], dim=0)
        q, _ = torch.linalg.qr(directions.T.double())
        block_rows = torch.zeros((width, flux.shape[1]), device=flux.device)
        block_rows[:, pixels] = q.T.float()
        rows.append(block_rows)
        seen.update(labels)
        col += width
    return mean, torch.cat(rows, dim=0)


# ---------------------------------------------------------------- training

def pixel_weights(ivar: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """1 / (σ² + s²_λ) where the pixel has data, else 0."""
    return torch.where(ivar > 0, ivar / (1 + ivar * s2), torch.zeros_like(ivar))


def chi2_red(model: Emulator, flux: torch.Tensor, ivar: torch.Tensor, x: torch.Tensor,
             batch: int = 1024) -> torch.Tensor:
    """χ²/pixel of each spectrum at the given (scaled) labels, with σ² + s²_λ."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            sl = slice(start, start + batch)
            w = pixel_weights(ivar[sl], model.s2)
            r = flux[sl] - model(x[sl])
            out.append((w * r * r).sum(1) / (ivar[sl] > 0).sum(1).clamp_min(1))
    return torch.cat(out) if out else torch.zeros(0)


def train_quadratic(model: QuadraticEmulator, flux: torch.Tensor, ivar: torch.Tensor,
                    x: torch.Tensor, cfg: Mapping[str, Any], log: Log,
                    label_variance: torch.Tensor | None = None) -> list[dict]:
    """The Cannon's training step: weighted least squares per pixel, then s²_λ, alternating.

    With ``label_variance`` (the catalogue errors², scaled units) the least squares use the
    unbiased (Hermite) estimates of the terms at the true labels, and s²_λ leaves out the
    scatter the label errors cause (Σ_k (∂f/∂x_k)² e_k²)."""
    variance = noise_variance(ivar)
    history = []
    plain = model.features(x)
    if label_variance is None:
        terms = torch.cat([torch.ones_like(plain[:, :1]), plain], dim=1)
        products = terms[:, :, None] * terms[:, None, :]
    else:
        terms, products = deconvolved_quadratic_terms(x, label_variance)
    allowed = torch.cat([torch.ones_like(model.readout_mask[:, :1]), model.readout_mask], dim=1)
    s2 = torch.zeros(flux.shape[1], device=flux.device)
    label_scatter = torch.zeros_like(flux)
    for step in range(int(cfg["scatter_rounds"])):
        weight = torch.where(ivar > 0, 1.0 / (variance + s2 + label_scatter),
                             torch.zeros_like(ivar))
        coef = weighted_normal_solve(terms, products, flux, weight, cfg["ridge"], allowed)
        with torch.no_grad():
            model.readout.weight.copy_(coef[1:].T)
            model.readout.bias.copy_(coef[0])
            model.apply_mask()
            if label_variance is not None:
                _, jac = model.flux_and_jacobian(x)
                label_scatter = (jac ** 2 * label_variance[:, :, None]).sum(1)
            residual2 = (flux - model(x)) ** 2
            s2 = fit_intrinsic_scatter(residual2, variance + label_scatter, cfg["clip_sigma"])
            model.log_s2.copy_(s2.log())
        chi = chi2_red(model, flux, ivar, x)
        history.append({"phase": "scatter", "step": step, "loss": float("nan"),
                        "train_chi2_red_median": float(chi.median())})
        log(f"emulator (quadratic): round {step + 1}: median χ²/pixel {float(chi.median()):.3f}, "
            f"median s_λ {float(s2.sqrt().median()):.2g}")
    return history


def train_payne(model: PayneEmulator, flux: torch.Tensor, ivar: torch.Tensor, x: torch.Tensor,
                cfg: Mapping[str, Any], generator: torch.Generator, log: Log) -> list[dict]:
    """Basis + coefficient regression (cheap: the MLP's output is ``n_basis`` wide), s²_λ, then
    joint fine-tuning of everything on the pixels' Gaussian likelihood."""
    history: list[dict] = []
    n, batch = len(x), int(cfg["batch_size"])
    variance = noise_variance(ivar)
    start = time.perf_counter()
    mean, basis = spectral_basis(model, flux, x, cfg["ridge"],
                                 int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    with torch.no_grad():
        model.readout.weight.copy_(basis.T)
        model.readout.bias.copy_(mean)
    # the blocks' bases overlap on the elements' pixels: least-squares coefficients
    gram = (basis @ basis.T).double()
    target = torch.linalg.solve(gram, (basis @ (flux - mean).T).double()).T.float()
    params = list(model.mlps.parameters())
    opt = torch.optim.Adam(params, lr=cfg["learning_rate"])
    steps = int(cfg["pretrain_epochs"]) * math.ceil(n / batch)
    # OneCycleLR divides by the length of each phase: at least two warm-up steps and four in all
    total = max(steps, 4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["learning_rate"],
                                                total_steps=total,
                                                pct_start=max(0.1, 2.0 / total))
    for epoch in range(int(cfg["pretrain_epochs"])):
        order = torch.randperm(n, generator=generator).to(x.device)
        total = 0.0
        for i in range(0, n, batch):
            rows = order[i:i + batch]
            loss = ((model.features(x[rows]) - target[rows]) ** 2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
        history.append({"phase": "coefficients", "step": epoch, "loss": total / n,
                        "train_chi2_red_median": float("nan")})
    log(f"emulator (payne): basis of {model.n_basis} and {cfg['pretrain_epochs']} epochs "
        f"on its coefficients in {time.perf_counter() - start:.1f} s (loss "
        f"{history[-1]['loss']:.3g})")
    with torch.no_grad():
        residual2 = (flux - model(x)) ** 2
        model.log_s2.copy_(fit_intrinsic_scatter(residual2, variance, cfg["clip_sigma"]).log())
        # pixels far off the model (defects the clean stage kept) stay out of the fine-tuning
        use = ((residual2 < cfg["clip_sigma"] ** 2 * (variance + model.s2)) & (ivar > 0)).float()
    epochs = int(cfg["finetune_epochs"])
    if epochs:
        opt = torch.optim.Adam(model.parameters(), lr=cfg["finetune_learning_rate"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(n / batch))
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            f, v, u, xs = flux[order], variance[order], use[order], x[order]
            total = 0.0
            for i in range(0, n, batch):
                sl = slice(i, i + batch)
                var = v[sl] + model.s2
                loss = (0.5 * u[sl] * ((model(xs[sl]) - f[sl]) ** 2 / var + var.log())).sum() \
                    / u[sl].sum().clamp_min(1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                model.apply_mask()
                total += float(loss.detach()) * (min(i + batch, n) - i)
            history.append({"phase": "joint", "step": epoch, "loss": total / n,
                            "train_chi2_red_median": float("nan")})
    chi = chi2_red(model, flux, ivar, x)
    history[-1]["train_chi2_red_median"] = float(chi.median())
    log(f"emulator (payne): {epochs} joint epochs; median χ²/pixel {float(chi.median()):.3f}, "
        f"median s_λ {float(model.s2.detach().sqrt().median()):.2g}; "
        f"{time.perf_counter() - start:.1f} s")
    return history


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=["phase", "step", "loss", "train_chi2_red_median",
                                          "valid_chi2_red_median"])
