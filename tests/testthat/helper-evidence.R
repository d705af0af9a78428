# Independent references for the tests: exact log evidences by quadrature
# and closed-form ELBOs written directly from the formulas.

logsumexp <- function(x) { m <- max(x); m + log(sum(exp(x - m))) }

mvn_logdens <- function(y, mean, S) {
  R <- chol(S)
  z <- backsolve(R, y - mean, transpose = TRUE)
  -0.5 * sum(z^2) - sum(log(diag(R))) - 0.5 * length(y) * log(2 * pi)
}

# log p(y) of y = X b + e, b ~ N(m0, diag(s0^2)), e ~ N(0, I/tau), tau ~ Ga(a0, b0),
# by quadrature over u = log tau of N(y; X m0, I/tau + X S0 X') Ga(tau) tau.
gaussian_log_evidence <- function(X, y, m0, s0, a0, b0) {
  XSX <- X %*% (s0^2 * t(X))
  f <- function(u) vapply(u, function(ui) {
    mvn_logdens(y, drop(X %*% m0), diag(exp(-ui), length(y)) + XSX) +
      dgamma(exp(ui), a0, b0, log = TRUE) + ui
  }, 0)
  grid <- seq(-15, 15, length.out = 601)
  lg <- f(grid)
  c0 <- max(lg)
  lo <- grid[max(1, which.max(lg) - 150)]; hi <- grid[min(601, which.max(lg) + 150)]
  c0 + log(integrate(function(u) exp(f(u) - c0), lo, hi, rel.tol = 1e-10)$value)
}

# log p(y) for a 2-coefficient model by a 2-D trapezoid rule on a box of
# +-9 posterior sds around the mode (the integrand is smooth and light-tailed).
log_evidence_2d <- function(loglik, logprior, start, npts = 301) {
  lj <- function(b) loglik(b) + logprior(b)
  o <- optim(start, function(b) -lj(b), method = "BFGS", hessian = TRUE)
  sd <- sqrt(diag(solve(o$hessian)))
  g1 <- seq(o$par[1] - 9 * sd[1], o$par[1] + 9 * sd[1], length.out = npts)
  g2 <- seq(o$par[2] - 9 * sd[2], o$par[2] + 9 * sd[2], length.out = npts)
  L <- outer(g1, g2, Vectorize(function(a, b) lj(c(a, b))))
  w1 <- rep(diff(g1)[1], npts); w1[c(1, npts)] <- w1[1] / 2
  w2 <- rep(diff(g2)[1], npts); w2[c(1, npts)] <- w2[1] / 2
  logsumexp(L + log(outer(w1, w2)))
}

# Closed-form Poisson GVA ELBO (algorithms.md 1.1) with normal priors.
poisson_elbo_R <- function(X, y, off, mu, Sigma, m0, s0) {
  m <- drop(X %*% mu) + off
  v <- rowSums((X %*% Sigma) * X)
  p <- length(mu)
  sum(y * m - exp(m + v / 2) - lgamma(y + 1)) +
    sum(-0.5 * log(2 * pi * s0^2) - ((mu - m0)^2 + diag(Sigma)) / (2 * s0^2)) +
    0.5 * as.numeric(determinant(Sigma)$modulus) + 0.5 * p * (1 + log(2 * pi))
}

# Model list for the C entry points, as vb_fit() builds it.
c_model <- function(X, y, family = poisson(), off = rep(0, nrow(X)), w = rep(1, nrow(X)),
                    prior = vbayes::normal(0, 1), prior_intercept = vbayes::normal(0, 1)) {
  if (is.null(colnames(X)))
    colnames(X) <- c(if (all(X[, 1] == 1)) "(Intercept)" else "x1", paste0("x", seq_len(ncol(X))[-1]))
  pa <- vbayes:::prior_arrays(colnames(X), prior, prior_intercept)
  vbayes:::glm_model(X, y, w, off, family, pa, vbayes::gamma_prior(1, 1), vbayes::vb_control())
}
`%||%` <- function(a, b) if (is.null(a)) b else a
