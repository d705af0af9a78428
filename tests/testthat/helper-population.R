# A coupled Poisson population simulated bin by bin (independently of the
# package's own simulator): W[[i]][[j]] are the basis weights of the filter
# j -> i, b0 the baseline log rates, dt the bin width.
sim_population <- function(Tn, B, W, b0, dt, seed) {
  set.seed(seed)
  N <- length(b0); L <- nrow(B)
  filt <- array(0, c(L, N, N))
  for (i in 1:N) for (j in 1:N) filt[, i, j] <- B %*% W[[i]][[j]]
  Y <- matrix(0L, Tn, N, dimnames = list(NULL, paste0("n", 1:N)))
  for (t in 1:Tn) {
    eta <- b0
    for (l in seq_len(min(L, t - 1))) eta <- eta + filt[l, , ] %*% Y[t - l, ]
    Y[t, ] <- rpois(N, dt * exp(pmin(eta, 6)))
  }
  Y
}
