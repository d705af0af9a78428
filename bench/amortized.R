# Benchmark of vb_amortized() (issue 14): simulated Poisson populations,
# N = 30-200 units, d = 2-10 latents, 10^3-2 x 10^4 trials.  For each:
#  * training time (encoder mlp(c(64, 64)) and decoder learned jointly, the
#    default amortized_control() but for an epoch cap that bounds the run);
#  * per-trial inference time on new trials: one forward pass (predict(),
#    5000 trials at once), and the forward pass with refine = 2 (1000
#    trials), against per-trial CAVI with the same decoder (the GLM engine:
#    vb_fit() as a user would call it; glm_model() + its .Call; and the bare
#    .Call on models built beforehand);
#  * amortization gap ELBO(q*_i) - ELBO(q_phi) on 200 new trials, before and
#    after refinement (q*_i by CAVI), and the diagonal family's approximation
#    gap; for the two smaller configurations also a low-rank (rank 2) encoder.
# The per-trial timings run twice: on the BLAS R is linked to, and (when it is
# installed) on single-threaded OpenBLAS through LD_PRELOAD in a child process,
# since the forward pass is dgemm-bound and its speed is the BLAS's.
# Runs alone: R_LIBS=.lib Rscript bench/amortized.R (about 15 minutes on a
# loaded machine).  VBAYES_BENCH_AMZ_SCALE < 1 shrinks the trial counts.
suppressPackageStartupMessages(library(vbayes))
scale <- as.numeric(Sys.getenv("VBAYES_BENCH_AMZ_SCALE", "1"))
timing_only <- Sys.getenv("VBAYES_BENCH_AMZ_TIMING", "")
openblas <- "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"

# CPU seconds (user + system) as well as elapsed: the machine is shared, and
# CPU time is what an idle core would take (every step is single-threaded)
cpu <- function(expr) {
  t <- system.time(expr)
  c(elapsed = t[["elapsed"]], cpu = t[["user.self"]] + t[["sys.self"]])
}

# per-trial inference timings of one fit on new trials ynew (microseconds)
timings <- function(fit, ynew) {
  d <- fit$latent_dim; N <- ncol(ynew)
  nf <- min(5000, nrow(ynew))
  t_fwd <- cpu(for (r in 1:3) p0 <- predict(fit, ynew[seq_len(nf), ])) / 3 / nf
  t_ref <- cpu(p2 <- predict(fit, ynew[1:1000, ], refine = 2)) / 1000
  C <- fit$params$C; colnames(C) <- paste0("z", seq_len(d))
  m <- 100
  t_vbfit <- cpu(for (i in seq_len(m))
    vb_fit(C, ynew[i, ], family = poisson(), offset = fit$params$d, prior = normal(0, 1),
           approx = "meanfield", control = vb_control(quiet = TRUE))) / m
  pa <- list(type = integer(d), location = numeric(d), scale = rep(1, d))
  ctl <- vb_control(quiet = TRUE)
  mk <- function(i) vbayes:::glm_model(C, ynew[i, ], rep(1, N), fit$params$d, poisson(), pa, gamma_prior(1, 1), ctl)
  init <- c(numeric(d), 1, 1)
  t_model <- cpu(for (i in seq_len(m)) .Call(vbayes:::C_glm_cavi, mk(i), init, seq_len(d) - 1L, ctl)) / m
  mods <- lapply(seq_len(m), mk)
  t_call <- cpu(for (i in seq_len(m)) .Call(vbayes:::C_glm_cavi, mods[[i]], init, seq_len(d) - 1L, ctl)) / m
  us <- function(t) 1e6 * t[["cpu"]]
  data.frame(fwd_us = us(t_fwd), refine2_us = us(t_ref), vbfit_us = us(t_vbfit), model_call_us = us(t_model),
             call_us = us(t_call), x_vbfit = t_vbfit[["cpu"]] / t_fwd[["cpu"]],
             x_model_call = t_model[["cpu"]] / t_fwd[["cpu"]], x_call = t_call[["cpu"]] / t_fwd[["cpu"]],
             x_refine2_call = t_call[["cpu"]] / t_ref[["cpu"]])
}

timing_table <- function(tm, title) {
  cat(sprintf("\n%s\n\n", title))
  cat("| N | d | covariance | forward (us/trial) | refine=2 (us/trial) | CAVI vb_fit (us/trial) | CAVI glm_model + .Call | CAVI .Call | forward vs vb_fit | vs glm_model + .Call | vs .Call | refine=2 vs .Call |\n")
  cat("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
  for (i in seq_len(nrow(tm))) with(tm[i, ], cat(sprintf(
    "| %d | %d | %s | %.2f | %.1f | %.0f | %.0f | %.0f | %.0fx | %.0fx | %.0fx | %.1fx |\n",
    N, d, cov, fwd_us, refine2_us, vbfit_us, model_call_us, call_us, x_vbfit, x_model_call, x_call,
    x_refine2_call)))
}

if (nzchar(timing_only)) { # child process: timings on another BLAS
  sv <- readRDS(timing_only)
  tm <- do.call(rbind, lapply(sv, function(s) cbind(s$key, timings(s$fit, s$ynew))))
  timing_table(tm, sprintf("Per-trial inference, BLAS %s (OPENBLAS_NUM_THREADS=%s):", extSoftVersion()[["BLAS"]],
                           Sys.getenv("OPENBLAS_NUM_THREADS")))
  quit(save = "no")
}

cat(sprintf("- date: %s UTC; nproc %s; load average %s\n- %s; BLAS %s\n\n", format(Sys.time(), tz = "UTC"),
            system2("nproc", stdout = TRUE), paste(strsplit(readLines("/proc/loadavg"), " ")[[1]][1:3], collapse = " "),
            R.version.string, extSoftVersion()[["BLAS"]]))

sim <- function(n, N, d, seed) {
  set.seed(seed)
  C <- matrix(rnorm(N * d, sd = 0.6 / sqrt(d)), N)
  dd <- rnorm(N, log(4), 0.5) # about 4 spikes per unit and trial
  z <- matrix(rnorm(n * d), n)
  list(y = matrix(rpois(n * N, exp(z %*% t(C) + rep(dd, each = n))), n), C = C, d = dd)
}

configs <- data.frame(N = c(30, 100, 200), d = c(2, 5, 10), n = c(1e3, 1e4, 2e4), epochs = c(1000, 300, 40),
                      lowrank = c(TRUE, TRUE, FALSE))
rows <- list(); tms <- list(); saved <- list()
for (k in seq_len(nrow(configs))) {
  cf <- configs[k, ]
  n <- max(200, round(cf$n * scale))
  s <- sim(n + 5000, cf$N, cf$d, k)
  ytr <- s$y[seq_len(n), ]; ynew <- s$y[n + seq_len(5000), ]
  for (cov in c("diagonal", if (cf$lowrank) "lowrank")) {
    enc <- if (cov == "diagonal") mlp(c(64, 64)) else mlp(c(64, 64), covariance = "lowrank", rank = 2)
    set.seed(k)
    t_train <- cpu(fit <- suppressWarnings(vb_amortized(ytr, cf$d, encoder = enc,
                   control = amortized_control(epochs = cf$epochs, quiet = TRUE))))
    key <- data.frame(N = cf$N, d = cf$d, cov = cov)
    tm <- cbind(key, timings(fit, ynew))
    tms[[length(tms) + 1L]] <- tm
    saved[[length(saved) + 1L]] <- list(key = key, fit = fit, ynew = ynew)
    sm <- summary(fit, newdata = ynew[1:200, ], trials = 200, refine = 2, K = 0)
    g <- sm$gaps[sm$gaps$set == "newdata", ]
    rows[[length(rows) + 1L]] <- data.frame(key, trials = n, epochs = fit$epochs, checks = fit$iterations,
                                            converged = fit$converged, train_s = t_train[["elapsed"]],
                                            train_cpu = t_train[["cpu"]],
                                            us_per_trial_pass = 1e6 * t_train[["cpu"]] / (fit$epochs * length(fit$train)),
                                            gap = g$amortization_gap, gap_refine2 = g$gap_refined,
                                            approx_gap = g$approximation_gap, approx_gap_diag = g$approximation_gap_diagonal)
    cat(sprintf("config %d (%s) done (%.1f s training)\n", k, cov, t_train[["elapsed"]]))
  }
}
res <- do.call(rbind, rows)
cat("\nTraining and gaps (gaps on 200 new trials, nats per trial):\n\n")
cat("| N | d | covariance | trials | epochs | checks | converged | training (s, elapsed) | training (s, CPU) | CPU us per trial and pass | amortization gap | after refine=2 | approx. gap of the family | approx. gap, diagonal |\n")
cat("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
for (i in seq_len(nrow(res))) with(res[i, ], cat(sprintf(
  "| %d | %d | %s | %d | %.1f | %d | %s | %.1f | %.1f | %.1f | %.4f | %.2e | %.4f | %.4f |\n",
  N, d, cov, trials, epochs, checks, converged, train_s, train_cpu, us_per_trial_pass, gap, gap_refine2,
  approx_gap, approx_gap_diag)))
timing_table(do.call(rbind, tms), sprintf("Per-trial inference, BLAS %s:", extSoftVersion()[["BLAS"]]))
if (file.exists(openblas)) {
  f <- tempfile(fileext = ".rds")
  saveRDS(saved, f)
  rs <- file.path(R.home("bin"), "Rscript")
  out <- system2(rs, "bench/amortized.R", stdout = TRUE, stderr = TRUE,
                 env = c(sprintf("LD_PRELOAD=%s", openblas), "OPENBLAS_NUM_THREADS=1",
                         sprintf("VBAYES_BENCH_AMZ_TIMING=%s", f), sprintf("R_LIBS=%s", Sys.getenv("R_LIBS"))))
  cat(out, sep = "\n")
}
cat("\nPer-trial times are CPU microseconds (user + system); ratios are per-trial CAVI time / forward-pass time.\n")
