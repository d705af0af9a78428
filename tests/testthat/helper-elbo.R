# Reference ELBOs of GLM fits, written here from the formulas of
# shared/reference/algorithms.md and evaluated at a fit's q, independently of
# the C code: gaussian (section 4.2, semi-conjugate q(b) q(tau)), poisson
# (1.1), binomial Gaussian variational approximation (2.4, with
# E log(1 + e^eta) by integrate() instead of the package's Gauss-Hermite
# rule) and Laplace priors (3.3, the folded-normal mean E|b - m|).
#
# prior: list(type = "normal"/"laplace" per coefficient, location, scale);
# tau = c(shape, rate) of q(tau) and tau_prior = c(a0, b0) for gaussian.
ref_elbo <- function(X, y, family, mu, Sigma, prior, tau = NULL, tau_prior = c(1, 1),
                     trials = rep(1, length(y)), offset = rep(0, length(y))) {
  m <- drop(X %*% mu) + offset
  v <- rowSums((X %*% Sigma) * X)
  p <- length(mu)
  kl_tau <- 0
  if (family == "gaussian") {
    A <- tau[1]; B <- tau[2]; a0 <- tau_prior[1]; b0 <- tau_prior[2]
    Elt <- digamma(A) - log(B); Et <- A / B
    w <- trials; pos <- w > 0
    loglik <- sum(0.5 * (log(w[pos]) + Elt - log(2 * pi)) -
                  0.5 * w[pos] * Et * ((y[pos] - m[pos])^2 + v[pos]))
    Elp_tau <- a0 * log(b0) - lgamma(a0) + (a0 - 1) * Elt - b0 * Et
    H_tau <- A - log(B) + lgamma(A) + (1 - A) * digamma(A)
    kl_tau <- -(Elp_tau + H_tau)
  } else if (family == "poisson") {
    loglik <- sum(y * m - exp(m + v / 2) - lgamma(y + 1))
  } else if (family == "binomial") {
    Esp <- mapply(function(mi, vi) {
      s <- sqrt(vi)
      integrate(function(z) { u <- mi + s * z; (pmax(u, 0) + log1p(exp(-abs(u)))) * dnorm(z) },
                -Inf, Inf, rel.tol = 1e-13,
                abs.tol = 0)$value
    }, m, v)
    loglik <- sum(y * m - trials * Esp + lchoose(trials, y))
  }
  s <- sqrt(diag(Sigma))
  d <- mu - prior$location
  b <- prior$scale
  Elp <- ifelse(prior$type == "normal",
                -0.5 * log(2 * pi * b^2) - (d^2 + s^2) / (2 * b^2),
                -log(2 * b) - (s * sqrt(2 / pi) * exp(-d^2 / (2 * s^2)) + d * (1 - 2 * pnorm(-d / s))) / b)
  H <- 0.5 * as.numeric(determinant(Sigma)$modulus) + 0.5 * p * (1 + log(2 * pi))
  kl <- -(sum(Elp) + H) + kl_tau
  c(elbo = loglik - kl, loglik = loglik, kl = kl)
}

# The reference at a vb() fit's own q, with the priors named explicitly.
ref_elbo_fit <- function(fit, prior, tau_prior = c(1, 1)) {
  fam <- fit$family$family
  y <- fit$y
  ref_elbo(fit[["x"]], y, fam, unname(coef(fit)), unname(vcov(fit)), prior,
           tau = if (fam == "gaussian") unname(fit$tau), tau_prior = tau_prior,
           trials = fit$prior.weights, offset = fit$offset)
}
