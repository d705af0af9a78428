# The fidelity / tractability curve of vb_lds(approx = "block") (issue 17):
# ELBO and time against the run length L = 1 (meanfield), 2, 5, 10, T
# (structured), on one simulated data set, gaussian and poisson, parameters
# fixed at the truth so that only the family of q differs.
#
#   Rscript bench/lds_block.R
suppressPackageStartupMessages(library(vbayes))
cat(sprintf("machine: %d cores, %s; %s; load average: %s\n\n", parallel::detectCores(), R.version.string,
            format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"),
            paste(readLines("/proc/loadavg", warn = FALSE)[1], collapse = " ")))
set.seed(1)
T <- 2000; N <- 30; d <- 3
th <- 0.15
A <- 0.97 * matrix(c(cos(th), sin(th), 0, -sin(th), cos(th), 0, 0, 0, 1), 3)
Q <- diag(0.05, d)
z <- matrix(0, T, d)
for (t in 2:T) z[t, ] <- A %*% z[t - 1, ] + MASS::mvrnorm(1, rep(0, d), Q)
C <- matrix(rnorm(N * d, sd = 0.5), N)
p <- list(A = A, Q = Q, C = C, d = rep(0, N), R = rep(0.5, N), m0 = rep(0, d), V0 = diag(d))
Yg <- z %*% t(C) + matrix(rnorm(T * N, sd = sqrt(0.5)), T)
pp <- p; pp$d <- rep(log(0.5), N); pp$R <- NULL
Yp <- matrix(rpois(T * N, exp(pp$d[1] + z %*% t(C))), T)
ctl <- vb_control(quiet = TRUE, maxit = 2000, tol = 1e-10)
run <- function(Y, fam, prm, L) {
  a <- if (L == 1) "meanfield" else if (L == T) "structured" else "block"
  tm <- system.time(f <- vb_lds(Y, d, family = fam, params = prm, learn = FALSE, approx = a,
                                blocks = if (a == "block") L, control = ctl))[["elapsed"]]
  c(elbo = f$elbo, time = tm, sweeps = f$iterations, converged = f$converged)
}
for (fam in c("gaussian", "poisson")) {
  cat(sprintf("### %s observations, T = %d, N = %d, d = %d\n\n", fam, T, N, d))
  cat("| run length L | family | ELBO | gap to structured (nats) | sweeps | time (s) |\n|---|---|---|---|---|---|\n")
  res <- lapply(c(1, 2, 5, 10, T), function(L)
    run(if (fam == "gaussian") Yg else Yp, if (fam == "gaussian") gaussian() else poisson(),
        if (fam == "gaussian") p else pp, L))
  top <- res[[5]][["elbo"]]
  for (k in seq_along(res)) {
    L <- c(1, 2, 5, 10, T)[k]; r <- res[[k]]
    cat(sprintf("| %d | %s | %.2f | %.2f | %d | %.2f |\n", L,
                if (L == 1) "meanfield" else if (L == T) "structured" else "block", r[["elbo"]], top - r[["elbo"]],
                as.integer(r[["sweeps"]]), r[["time"]]))
  }
  cat("\n")
}
