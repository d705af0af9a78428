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
