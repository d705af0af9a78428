# References for the hierarchical GLM tests, built without the package's engine.

# Small grouped data: G groups of size m, one covariate.
glmm_data <- function(G = 6, m = 5, seed = 1, family = "gaussian", slope_sd = 0) {
  set.seed(seed)
  d <- data.frame(g = factor(rep(seq_len(G), each = m)), x = rnorm(G * m))
  b0 <- rnorm(G, sd = 0.8); b1 <- rnorm(G, sd = slope_sd)
  eta <- 0.5 + 0.7 * d$x + b0[d$g] + b1[d$g] * d$x
  d$y <- switch(family, gaussian = eta + rnorm(G * m, sd = 0.6),
                poisson = rpois(G * m, exp(eta)),
                binomial = rbinom(G * m, 1, plogis(eta)))
  d
}

# Call the hierarchical front end with Sigma (and tau) held fixed: then the
# ELBO of a gaussian model bounds the conditional evidence log p(y | Sigma, tau).
glmm_fixed <- function(formula, data, Sigma, tau = NULL, approx = "partial", family = gaussian(),
                       prior = normal(0, 2), prior_intercept = normal(0, 5), tol = 1e-12) {
  vbayes:::vb_glmm(mc = call("vb", formula = formula), formula = formula, data = data,
                   family = family, prior = prior, prior_intercept = prior_intercept,
                   prior_precision = gamma_prior(1, 1),
                   prior_covariance = vbayes:::fixed_covariance(Sigma), approx = approx,
                   control = vb_control(quiet = TRUE, tol = tol, maxit = 2000), x = TRUE, y = TRUE,
                   contrasts = NULL, missing_prior = FALSE, missing_intercept = FALSE,
                   env = environment(), fix_tau = tau)
}

# Random-effects design Z (n x G d) with columns group-major, as the engine orders them.
glmm_Z <- function(g, Zt) {
  G <- nlevels(g); d <- ncol(Zt); n <- length(g)
  Z <- matrix(0, n, G * d)
  for (k in seq_len(d)) Z[cbind(seq_len(n), (as.integer(g) - 1L) * d + k)] <- Zt[, k]
  Z
}

# log N(y; mean, V) by a Cholesky factor.
ldmvnorm <- function(y, mean, V) {
  R <- chol(V)
  z <- backsolve(R, y - mean, transpose = TRUE)
  -0.5 * length(y) * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(z^2)
}

# Exact log p(y | Sigma, tau) of y = X beta + Z b + e, beta ~ N(m0, S0),
# b_g ~ N(0, Sigma), e ~ N(0, I / tau): the marginal multivariate normal.
exact_logev_gauss <- function(y, X, Z, m0, S0, Sigma, tau) {
  G <- ncol(Z) / nrow(Sigma)
  V <- X %*% S0 %*% t(X) + Z %*% kronecker(diag(G), Sigma) %*% t(Z) + diag(length(y)) / tau
  ldmvnorm(y, drop(X %*% m0), V)
}

# The Gaussian-q ELBO of a Poisson model with b ~ N(0, P^-1) fixed, at a
# dense q = N(mu, L L'), written out from its closed form.
elbo_dense_pois <- function(mu, L, C, y, P, m0) {
  m <- drop(C %*% mu); v <- rowSums((C %*% L)^2)
  Sig <- L %*% t(L)
  D <- length(mu)
  sum(y * m - exp(m + v / 2) - lgamma(y + 1)) -
    0.5 * (sum((mu - m0) * (P %*% (mu - m0))) + sum(P * Sig)) +
    0.5 * as.numeric(determinant(P)$modulus) - 0.5 * D * log(2 * pi) +
    sum(log(abs(diag(L)))) + 0.5 * D * (1 + log(2 * pi))
}

# Direct maximisation of elbo_dense_pois over (mu, lower-triangular L).
brute_force_pois <- function(C, y, P, m0) {
  D <- ncol(C)
  lt <- which(lower.tri(diag(D), diag = TRUE))
  unpack <- function(par) {
    L <- matrix(0, D, D); L[lt] <- par[-seq_len(D)]
    list(mu = par[seq_len(D)], L = L)
  }
  f <- function(par) { u <- unpack(par); -elbo_dense_pois(u$mu, u$L, C, y, P, m0) }
  start <- c(m0, diag(0.1, D)[lt])
  o <- optim(start, f, method = "BFGS", control = list(maxit = 5000, reltol = 1e-15))
  o <- optim(o$par, f, method = "BFGS", control = list(maxit = 5000, reltol = 1e-15))
  -o$value
}

# |a - b| <= tol: an absolute tolerance (ELBOs of tens to hundreds of nats).
expect_abs <- function(object, expected, tol, label = NULL) {
  d <- abs(object - expected)
  expect(isTRUE(d <= tol), sprintf("%s: |%.12g - %.12g| = %.3g > %.3g", if (is.null(label)) "" else label,
                                   object, expected, d, tol))
  invisible(object)
}

# The ELBO of a Poisson model with b ~ N(0, P^-1) fixed, at a Gaussian q with
# mean mu and covariance Sig, from its closed form.
elbo_dense_pois_cov <- function(mu, Sig, C, y, P, m0) {
  m <- drop(C %*% mu); v <- rowSums((C %*% Sig) * C)
  D <- length(mu)
  sum(y * m - exp(m + v / 2) - lgamma(y + 1)) -
    0.5 * (sum((mu - m0) * (P %*% (mu - m0))) + sum(P * Sig)) +
    0.5 * as.numeric(determinant(P)$modulus) - 0.5 * D * log(2 * pi) +
    0.5 * as.numeric(determinant(Sig)$modulus) + 0.5 * D * (1 + log(2 * pi))
}

# Direct maximisation of that ELBO over the family q(beta | b) prod_j q(b_j):
# q(b_j) = N(m_j, L_j L_j') dense within factor j, beta | b = mu_beta +
# sum_j K_j (b_j - m_j) + L_beta eps, every K_j and L free.  `sizes` gives the
# number of coefficients of each factor (the columns of C after the p fixed).
brute_force_partial_pois <- function(C, y, P, m0, p, sizes) {
  D <- ncol(C); q <- D - p
  ltp <- which(lower.tri(diag(p), diag = TRUE))
  lts <- lapply(sizes, function(s) which(lower.tri(diag(s), diag = TRUE)))
  npar <- D + length(ltp) + sum(lengths(lts)) + p * q
  unpack <- function(par) {
    mu <- par[seq_len(D)]; k <- D
    Lb <- matrix(0, p, p); Lb[ltp] <- par[k + seq_along(ltp)]; k <- k + length(ltp)
    Sb <- matrix(0, q, q); pos <- 0
    for (j in seq_along(sizes)) {
      L <- matrix(0, sizes[j], sizes[j]); L[lts[[j]]] <- par[k + seq_along(lts[[j]])]; k <- k + length(lts[[j]])
      ii <- pos + seq_len(sizes[j]); Sb[ii, ii] <- L %*% t(L); pos <- pos + sizes[j]
    }
    K <- matrix(par[k + seq_len(p * q)], p, q)
    Sig <- rbind(cbind(Lb %*% t(Lb) + K %*% Sb %*% t(K), K %*% Sb), cbind(Sb %*% t(K), Sb))
    list(mu = mu, Sig = Sig)
  }
  f <- function(par) { u <- unpack(par); -elbo_dense_pois_cov(u$mu, u$Sig, C, y, P, m0) }
  start <- c(m0, diag(0.3, p)[ltp], unlist(lapply(sizes, function(s) diag(0.3, s)[lower.tri(diag(s), diag = TRUE)])), numeric(p * q))
  o <- optim(start, f, method = "BFGS", control = list(maxit = 10000, reltol = 1e-15))
  o <- optim(o$par, f, method = "BFGS", control = list(maxit = 10000, reltol = 1e-15))
  -o$value
}
