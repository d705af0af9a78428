# Dense references for the latent dynamical system tests: every quantity is
# built from the stacked (Td x Td) prior, independently of the C smoother.

lds_dense_prior <- function(p, T) {
  k <- nrow(p$A)
  F <- diag(T * k)
  if (T > 1) for (t in 2:T) F[(t - 1) * k + 1:k, (t - 2) * k + 1:k] <- -p$A
  Winv <- matrix(0, T * k, T * k)
  Winv[1:k, 1:k] <- solve(p$V0)
  if (T > 1) for (t in 2:T) Winv[(t - 1) * k + 1:k, (t - 1) * k + 1:k] <- solve(p$Q)
  Lam <- t(F) %*% Winv %*% F
  mu <- solve(F, c(p$m0, rep(0, (T - 1) * k)))
  list(Lam = Lam, mu = mu, Sigma = solve(Lam))
}

# Stacked observation matrix: y_t = C z_t, row index (t - 1) N + i.
lds_dense_design <- function(p, T) kronecker(diag(T), p$C)

lds_test_params <- function(k = 2, N = 4, seed = 1) {
  set.seed(seed)
  th <- 0.3
  A <- 0.95 * matrix(c(cos(th), sin(th), -sin(th), cos(th)), 2)[1:k, 1:k, drop = FALSE]
  list(A = A, Q = diag(0.1, k) + 0.02, C = matrix(rnorm(N * k), N, k), d = rnorm(N),
       R = runif(N, 0.2, 0.6), m0 = rnorm(k), V0 = diag(1, k) + 0.3)
}

# Exact log-likelihood of a gaussian LDS by the dense stacked MVN density;
# NA entries of y are dropped (marginalised).
lds_dense_loglik <- function(p, y) {
  T <- nrow(y)
  pr <- lds_dense_prior(p, T); X <- lds_dense_design(p, T)
  yv <- as.vector(t(y)); o <- !is.na(yv)
  mu <- drop(X %*% pr$mu) + rep(p$d, T)
  S <- X %*% pr$Sigma %*% t(X) + diag(rep(p$R, T))
  S <- S[o, o]; r <- (yv - mu)[o]
  -0.5 * (sum(o) * log(2 * pi) + as.numeric(determinant(S)$modulus) + sum(r * solve(S, r)))
}

# Dense exact posterior of a gaussian LDS: precision, mean.
lds_dense_posterior <- function(p, y) {
  T <- nrow(y)
  pr <- lds_dense_prior(p, T); X <- lds_dense_design(p, T)
  yv <- as.vector(t(y)); o <- !is.na(yv)
  w <- rep(1 / p$R, T) * o
  Lam <- pr$Lam + t(X) %*% (w * X)
  r <- ifelse(o, yv - rep(p$d, T), 0)
  mean <- solve(Lam, pr$Lam %*% pr$mu + t(X) %*% (w * r))
  list(Lam = Lam, Sigma = solve(Lam), mean = drop(mean))
}

# Diagonal (t, t) and sub-diagonal (t, t-1) blocks of a dense Td x Td matrix.
lds_blocks <- function(S, k, T, lag = 0) {
  ts <- (1 + lag):T
  array(vapply(ts, function(t) S[(t - 1) * k + 1:k, (t - 1 - lag) * k + 1:k], numeric(k * k)),
        c(k, k, length(ts)))
}

# Absolute agreement (testthat 3e's expect_equal() tolerance is relative).
expect_close <- function(object, expected, tol) {
  err <- max(abs(as.vector(object) - as.vector(expected)))
  expect(is.finite(err) && err <= tol, sprintf("max absolute difference %.3g exceeds %.3g", err, tol))
  invisible(object)
}

# log N(x; mu, V) written out (for hand-checked log joints).
mvn_logd <- function(x, mu, V) {
  R <- chol(V); e <- backsolve(R, x - mu, transpose = TRUE)
  -0.5 * sum(e^2) - sum(log(diag(R))) - length(x) / 2 * log(2 * pi)
}
