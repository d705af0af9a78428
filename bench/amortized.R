# Benchmark of vb_amortized() (issue 14): simulated Poisson populations,
# N = 30-200 units, d = 2-10 latents, 10^3-10^5 trials.  For each:
#  * training time (encoder mlp(c(64, 64)) and decoder learned jointly);
#  * per-trial inference time on 1000 new trials: one forward pass, and the
#    forward pass with refine = 2 Newton steps, against per-trial CAVI with
#    the same decoder (the GLM engine: vb_fit() as a user would call it, and
#    its .Call without the R front end);
#  * amortization gap ELBO(q*_i) - ELBO(q_phi) on 200 new trials, before and
#    after refinement (q*_i by CAVI).
# Runs alone: R_LIBS=.lib Rscript bench/amortized.R (about 5 minutes).
# VBAYES_BENCH_AMZ_SCALE < 1 shrinks the trial counts for a quick look.
suppressPackageStartupMessages(library(vbayes))
scale <- as.numeric(Sys.getenv("VBAYES_BENCH_AMZ_SCALE", "1"))
cat(sprintf("- date: %s UTC; nproc %s; load average %s\n- %s\n\n", format(Sys.time(), tz = "UTC"),
            system2("nproc", stdout = TRUE), paste(strsplit(readLines("/proc/loadavg"), " ")[[1]][1:3], collapse = " "),
            R.version.string))

sim <- function(n, N, d, seed) {
  set.seed(seed)
  C <- matrix(rnorm(N * d, sd = 0.6 / sqrt(d)), N)
  dd <- rnorm(N, log(4), 0.5) # about 4 spikes per unit and trial
  z <- matrix(rnorm(n * d), n)
  list(y = matrix(rpois(n * N, exp(z %*% t(C) + rep(dd, each = n))), n), C = C, d = dd)
}

configs <- data.frame(N = c(30, 100, 200), d = c(2, 5, 10), n = c(1e3, 1e4, 1e5), epochs = c(1000, 100, 8))
# CPU seconds (user + system) as well as elapsed: the machine is shared, and
# CPU time is what an idle machine would take (every step is single-threaded)
cpu <- function(expr) {
  t <- system.time(expr)
  c(elapsed = t[["elapsed"]], cpu = t[["user.self"]] + t[["sys.self"]])
}
rows <- list()
for (k in seq_len(nrow(configs))) {
  cf <- configs[k, ]
  n <- max(200, round(cf$n * scale))
  s <- sim(n + 1000, cf$N, cf$d, k)
  ytr <- s$y[seq_len(n), ]; ynew <- s$y[n + seq_len(1000), ]
  set.seed(k)
  t_train <- system.time(fit <- suppressWarnings(vb_amortized(ytr, cf$d, encoder = mlp(c(64, 64)),
                         control = amortized_control(epochs = cf$epochs, quiet = TRUE))))[["elapsed"]]
  t_fwd <- cpu(for (r in 1:5) p0 <- predict(fit, ynew)) / 5 / 1000
  t_ref <- cpu(p2 <- predict(fit, ynew, refine = 2)) / 1000
  # per-trial CAVI with the same decoder (meanfield q, as the encoder's family)
  C <- fit$params$C; colnames(C) <- paste0("z", seq_len(cf$d))
  m <- 100
  t_cavi <- cpu(for (i in seq_len(m))
    vb_fit(C, ynew[i, ], family = poisson(), offset = fit$params$d, prior = normal(0, 1),
           approx = "meanfield", control = vb_control(quiet = TRUE))) / m
  pa <- list(type = integer(cf$d), location = numeric(cf$d), scale = rep(1, cf$d))
  ctl <- vb_control(quiet = TRUE)
  t_call <- cpu(for (i in seq_len(m)) {
    mod <- vbayes:::glm_model(C, ynew[i, ], rep(1, cf$N), fit$params$d, poisson(), pa, gamma_prior(1, 1), ctl)
    .Call(vbayes:::C_glm_cavi, mod, c(numeric(cf$d), 1, 1), seq_len(cf$d) - 1L, ctl)
  }) / m
  sm <- summary(fit, newdata = ynew[1:200, ], trials = 200, refine = 2, K = 0)
  g <- sm$gaps[sm$gaps$set == "newdata", ]
  rows[[k]] <- data.frame(N = cf$N, d = cf$d, trials = n, epochs = fit$iterations,
                          converged = fit$converged, train_s = t_train,
                          fwd_us = 1e6 * t_fwd[["cpu"]], refine2_us = 1e6 * t_ref[["cpu"]],
                          cavi_vbfit_us = 1e6 * t_cavi[["cpu"]], cavi_call_us = 1e6 * t_call[["cpu"]],
                          speedup_fwd = t_cavi[["cpu"]] / t_fwd[["cpu"]], speedup_fwd_call = t_call[["cpu"]] / t_fwd[["cpu"]],
                          speedup_refine2 = t_cavi[["cpu"]] / t_ref[["cpu"]],
                          speedup_fwd_elapsed = t_cavi[["elapsed"]] / t_fwd[["elapsed"]],
                          gap = g$amortization_gap, gap_refine2 = g$gap_refined,
                          approx_gap = g$approximation_gap)
  cat(sprintf("config %d done (%.1f s training)\n", k, t_train))
}
res <- do.call(rbind, rows)
cat("\n| N | d | trials | epochs | converged | training (s) | forward (us/trial) | refine=2 (us/trial) | CAVI vb_fit (us/trial) | CAVI .Call (us/trial) | speed-up forward vs vb_fit | vs .Call | (elapsed) | speed-up refine=2 vs vb_fit | amortization gap (nat/trial) | after refine=2 | diag approx. gap |\n")
cat("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
for (i in seq_len(nrow(res))) with(res[i, ], cat(sprintf(
  "| %d | %d | %d | %d | %s | %.1f | %.1f | %.1f | %.0f | %.0f | %.0fx | %.0fx | %.0fx | %.0fx | %.4f | %.2e | %.4f |\n",
  N, d, trials, epochs, converged, train_s, fwd_us, refine2_us, cavi_vbfit_us, cavi_call_us,
  speedup_fwd, speedup_fwd_call, speedup_fwd_elapsed, speedup_refine2, gap, gap_refine2, approx_gap)))
cat("\nPer-trial times are CPU microseconds (user + system) unless marked elapsed; training time is elapsed seconds.\n")
