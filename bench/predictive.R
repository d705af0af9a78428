# Benchmark of vb_predictive_coding() (issue 15).
#   Rscript bench/predictive.R        (R_LIBS must hold vbayes)
# 1. Inference time per trial, Newton (block-tridiagonal solves) versus Euler
#    (error-unit dynamics, dt = 0.05 until t_max = 80), against the number of
#    layers L = 1, 2, 4, 8, 16 of 8 units each (linear: cost O(L) per trial),
#    and against the layer width d = 4 .. 64 at L = 4 (Newton O(L d^3), Euler
#    O(steps L d^2)).  Linear activation, fixed parameters, 400 trials (40 for d > 16).
# 2. Learning: the free energy over variational-EM iterations of a factor
#    analysis (6 units, 2 factors, N = 2000) and its time against the peer a
#    statistician would pick, stats::factanal (maximum likelihood), with the
#    agreement of the fitted covariance; and the learning curve of a 2-layer
#    tanh network (q = "laplace" versus q = "delta").
# Times are CPU seconds (user + system), best of `reps` runs: the machine is
# shared, so elapsed time would also count other processes.
suppressPackageStartupMessages(library(vbayes))
set.seed(20261201)
reps <- as.integer(Sys.getenv("VBAYES_BENCH_REPS", "3"))
timeit <- function(f) {
  best <- Inf
  for (r in seq_len(reps)) {
    st <- system.time(.last <<- f())
    best <- min(best, st[["user.self"]] + st[["sys.self"]])
  }
  best
}
q <- pc_control(quiet = TRUE)

# a random linear hierarchy: L layers of d units above n0 = d data units
hier <- function(L, d, N = 400) {
  W <- lapply(seq_len(L), function(l) matrix(rnorm(d * d, sd = 0.5 / sqrt(d)), d, d))
  x <- matrix(rnorm(N * d), N)
  for (l in L:1) x <- x %*% t(W[[l]]) + matrix(rnorm(N * d, sd = 0.5), N)
  list(y = x, W = W, layers = rep(d, L))
}
run <- function(h, inference, ...)
  vb_predictive_coding(h$y, h$layers, weights = h$W, prior_var = 1, obs_var = 0.25,
                       learn = character(), inference = inference,
                       control = pc_control(quiet = TRUE, dt = 0.05, t_max = 80, trajectory = FALSE, ...))

cat("## 1. Inference time per trial (linear; 400 trials, 40 for d > 16)\n\n")
cat("| layers L | units d | Newton ms/trial | Newton iterations | Euler ms/trial (1599 steps) | max |x_newton - x_euler| |\n")
cat("|---:|---:|---:|---:|---:|---:|\n")
for (cfg in list(c(1, 8), c(2, 8), c(4, 8), c(8, 8), c(16, 8), c(4, 4), c(4, 16), c(4, 32), c(4, 64))) {
  h <- hier(cfg[1], cfg[2], N = if (cfg[2] > 16) 40 else 400)
  nt <- nrow(h$y)
  tn <- timeit(function() run(h, "newton")); fn <- .last
  te <- timeit(function() suppressWarnings(run(h, "euler"))); fe <- .last
  dx <- max(abs(unlist(fn$mean) - unlist(fe$mean)))
  cat(sprintf("| %d | %d | %.3f | %.1f | %.2f | %.1e |\n", cfg[1], cfg[2], 1000 * tn / nt,
              mean(fn$inner_iterations), 1000 * te / nt, dx))
}

cat("\n## 2. Learning\n\n")
N <- 2000
Wt <- matrix(c(1, 0.8, -0.6, 0.5, 0.9, 0.3, 0.2, -0.5, 0.7, 0.1, 0.4, -0.8), 6, 2)
psi <- c(0.2, 0.3, 0.4, 0.25, 0.35, 0.5)
y <- matrix(rnorm(N * 2), N) %*% t(Wt) + matrix(rnorm(N * 6), N) %*% diag(sqrt(psi))
y <- scale(y, scale = FALSE)
S <- crossprod(y) / N
tp <- timeit(function() vb_predictive_coding(y, layers = 2, control = pc_control(quiet = TRUE, maxit = 5000, tol = 1e-10)))
fp <- .last
tf <- timeit(function() factanal(covmat = S, factors = 2, n.obs = N))
fa <- .last
sdv <- sqrt(diag(S))
C_fa <- tcrossprod(fa$loadings * sdv) + diag(fa$uniquenesses * sdv^2)
C_pc <- tcrossprod(fp$weights$W1) + fp$Sigma$Sigma0
cat(sprintf("Factor analysis, 6 units, 2 factors, N = %d: vb_predictive_coding %.3f s (%d EM iterations, converged = %s); factanal %.3f s; max |C_pc - C_fa| = %.1e; free energy %.4f, exact ML log-likelihood at factanal's fit %.4f.\n\n",
            N, tp, fp$iterations, fp$converged, tf, max(abs(C_pc - C_fa)), elbo(fp),
            sum(-0.5 * colSums(backsolve(chol(C_fa), t(y), transpose = TRUE)^2)) -
              N * (3 * log(2 * pi) + sum(log(diag(chol(C_fa)))))))
tr <- fp$elbo_trace
its <- unique(pmin(c(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), length(tr) - 1))
cat("Learning curve (factor analysis): iteration: free energy\n\n")
cat(paste(sprintf("%d: %.3f", its, tr[its + 1]), collapse = "; "), "\n\n")

# two-layer tanh network: 8 units <- 3 <- 1
N2 <- 300
z <- rnorm(N2)
W2 <- matrix(c(1.2, -0.8, 0.5), 3, 1)
W1 <- matrix(rnorm(24, sd = 0.8), 8, 3)
x1 <- tanh(z) %*% t(W2) + matrix(rnorm(N2 * 3, sd = 0.3), N2)
y2 <- tanh(x1) %*% t(W1) + matrix(rnorm(N2 * 8, sd = 0.2), N2)
for (qq in c("laplace", "delta")) {
  set.seed(3)
  t2 <- timeit(function() withCallingHandlers(
    vb_predictive_coding(y2, layers = c(3, 1), activation = "tanh", q = qq,
                         control = pc_control(quiet = TRUE, maxit = 300, tol = 1e-9)),
    warning = function(w) invokeRestart("muffleWarning")))
  f2 <- .last
  tr <- f2$elbo_trace
  its <- unique(pmin(c(0, 1, 5, 10, 20, 50, 100, 200, 300), length(tr) - 1))
  cat(sprintf("tanh network 8 <- 3 <- 1, N = %d, q = %s: %.2f s, %d iterations, status %d%s; free energy by iteration: %s\n\n",
              N2, qq, t2, f2$iterations, f2$status,
              if (f2$collapsed > 0) sprintf(" (Sigma_%d collapsed)", f2$collapsed - 1) else "",
              paste(sprintf("%d: %.2f", its, tr[its + 1]), collapse = "; ")))
}
