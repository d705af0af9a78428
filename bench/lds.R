# Benchmark of vb_lds() (issue 6).
#   Rscript bench/lds.R        (R_LIBS must hold vbayes; KFAS optional)
# 1. Poisson LDS, N = 50 units, d = 5 latents, T = 1e4 and 1e5 bins: seconds per
#    variational-EM iteration (up to 3 E-step fixed-point passes + M-step) and
#    per structured E-step pass (one observation pass + one block-tridiagonal
#    smoother pass), and the ratio between the two T (linear: 10x).
# 2. Gaussian LDS against KFAS on the same data and parameters: log-likelihood
#    agreement (our structured ELBO is the exact log-likelihood) and time ratio.
# 3. The meanfield E-step (issue 18), Poisson, N = 50, d = 5, T = 1e4 and 1e5,
#    fixed parameters: CPU time, iterations and smoother passes of the joint
#    steps (the default) against plain coordinate sweeps (joint_means = 0,
#    the engine before issue 18) and against the structured family.
# VBAYES_BENCH_LDS=meanfield runs only part 3 (about 6 minutes, most of it the
# plain sweeps at T = 1e5, run once).
library(vbayes)
only_mf <- identical(Sys.getenv("VBAYES_BENCH_LDS"), "meanfield")
set.seed(20261124)
N <- 50; k <- 5
rot <- function(th) matrix(c(cos(th), sin(th), -sin(th), cos(th)), 2)
A <- diag(0.98, k); A[1:2, 1:2] <- 0.99 * rot(0.05); A[3:4, 3:4] <- 0.97 * rot(0.15)
p <- list(A = A, Q = diag(1 - 0.98^2, k), C = matrix(rnorm(N * k, sd = 0.3), N, k),
          d = rep(log(20), N), R = rep(1, N), m0 = rep(0, k), V0 = diag(1, k))
sim <- function(T, family, dt) vbayes:::lds_sim(p, T, family, dt)
ctl <- function(maxit) vb_control(maxit = maxit, tol = 1e-300, quiet = TRUE)
# best of `reps` runs of f(), in CPU seconds (user + system: the machine is
# shared, so elapsed time also counts other processes); the last result is
# kept in .last, the best elapsed time in .elapsed
timeit <- function(f, reps = 3) {
  tm <- el <- numeric(reps)
  for (r in seq_len(reps)) {
    st <- system.time(.last <<- f())
    tm[r] <- st[["user.self"]] + st[["sys.self"]]; el[r] <- st[["elapsed"]]
  }
  .elapsed <<- min(el)
  min(tm)
}

if (!only_mf) {
  cat("== Poisson LDS, N = 50, d = 5, bin 10 ms, about 20 Hz ==\n")
  # Marginal costs, so that setup (input checks, starting values, the first
  # steps away from the prior) does not blur the scaling in T:
  #   per E-step pass = [time(maxit = 12) - time(maxit = 2)] / (extra smoother passes)
  #   per EM iteration = [time(7 EM iterations) - time(2)] / 5
  res <- data.frame()
  for (T in c(1e4, 1e5)) {
    y <- sim(T, "poisson", 0.01)
    e2 <- timeit(function() vb_lds(y, k, poisson(), params = p, learn = FALSE, exposure = 0.01,
                                    control = ctl(2))); p2 <- .last$passes
    e12 <- timeit(function() vb_lds(y, k, poisson(), params = p, learn = FALSE, exposure = 0.01,
                                     control = ctl(12))); p12 <- .last$passes
    m2 <- timeit(function() vb_lds(y, k, poisson(), params = p, exposure = 0.01, control = ctl(2)))
    m7 <- timeit(function() vb_lds(y, k, poisson(), params = p, exposure = 0.01, control = ctl(7)))
    res <- rbind(res, data.frame(T = T, cpu_sec_total_12_fixed_point_iters = e12,
                                 cpu_sec_per_estep_pass = (e12 - e2) / (p12 - p2),
                                 cpu_sec_total_7_em_iters = m7,
                                 cpu_sec_per_em_iter = (m7 - m2) / 5))
  }
  print(res, digits = 4)
  cat(sprintf("CPU-time ratio T=1e5 / T=1e4: %.2f per E-step pass, %.2f per EM iteration, %.2f for the whole 7-iteration EM run\n",
              res$cpu_sec_per_estep_pass[2] / res$cpu_sec_per_estep_pass[1],
              res$cpu_sec_per_em_iter[2] / res$cpu_sec_per_em_iter[1],
              res$cpu_sec_total_7_em_iters[2] / res$cpu_sec_total_7_em_iters[1]))

  cat("\n== Gaussian LDS against KFAS (exact log-likelihood, fixed parameters) ==\n")
  if (requireNamespace("KFAS", quietly = TRUE)) {
    pg <- p; pg$d <- rnorm(N); pg$C <- matrix(rnorm(N * k), N, k); pg$R <- runif(N, 0.5, 2)
    for (T in c(1e3, 1e4, 1e5)) {
      y <- vbayes:::lds_sim(pg, T, "gaussian")
      t_ours <- timeit(function() vb_lds(y, k, params = pg, learn = FALSE, control = ctl(5)))
      ours <- .last
      # KFAS recognises the special only by its bare name
      SSMcustom <- KFAS::SSMcustom
      yc <- sweep(y, 2, pg$d); Zm <- pg$C; Tm <- pg$A; Qm <- pg$Q; a1 <- pg$m0; P1 <- pg$V0
      Hm <- diag(pg$R); Rm <- diag(k)
      mod <- KFAS::SSModel(yc ~ -1 + SSMcustom(Z = Zm, T = Tm, R = Rm, Q = Qm, a1 = a1, P1 = P1),
                           H = Hm)
      t_ll <- timeit(function() logLik(mod)); ll <- .last
      t_kfs <- timeit(function() KFAS::KFS(mod, smoothing = "state", filtering = "none")); ks <- .last
      dmean <- max(abs(ks$alphahat - ours$posterior[[1]]$mean))
      cat(sprintf("T = %g: vb_lds ELBO %.6f, KFAS logLik %.6f, diff %.2e; max |smoothed mean diff| %.1e\n",
                  T, ours$elbo, as.numeric(ll), ours$elbo - as.numeric(ll), dmean))
      cat(sprintf("        CPU time vb_lds %.3f s; KFAS logLik %.3f s (ratio %.2f); KFAS KFS smoother %.3f s (ratio %.2f)\n",
                  t_ours, t_ll, t_ours / t_ll, t_kfs, t_ours / t_kfs))
    }
  } else cat("KFAS not installed: skipped (install.packages(\"KFAS\") to run).\n")
}

cat("\n== Meanfield E-step, Poisson, N = 50, d = 5, fixed parameters, default tol ==\n")
cat(sprintf("%s; nproc %s; load before: %s\n", format(Sys.time(), tz = "UTC", usetz = TRUE),
            parallel::detectCores(), paste(readLines("/proc/loadavg"), collapse = " ")))
mf <- data.frame()
for (T in c(1e4, 1e5)) {
  y <- sim(T, "poisson", 0.01)
  run <- function(approx, joint = 500L, reps = 2)
    timeit(function() vb_lds(y, k, poisson(), params = p, learn = FALSE, exposure = 0.01,
                             approx = approx, control = vb_control(quiet = TRUE, maxit = 1000,
                                                                   joint_means = joint)), reps)
  row <- function(what, sec, f) data.frame(T = T, method = what, cpu_sec = sec, elapsed_sec = .elapsed,
                                           iterations = f$iterations, passes = f$passes,
                                           converged = f$converged, elbo = f$elbo)
  s_st <- run("structured"); f_st <- .last; r1 <- row("structured", s_st, f_st)
  s_mj <- run("meanfield"); f_mj <- .last; r2 <- row("meanfield, joint steps", s_mj, f_mj)
  s_mp <- run("meanfield", 0L, reps = 1); f_mp <- .last; r3 <- row("meanfield, plain sweeps", s_mp, f_mp)
  mf <- rbind(mf, r1, r2, r3)
  cat(sprintf("T = %g: joint / plain CPU %.3f (%.1fx faster); joint / structured %.2f; ELBO joint - plain %.3g; max |mean diff| %.2g; monotone joint trace: %s\n",
              T, s_mj / s_mp, s_mp / s_mj, s_mj / s_st, f_mj$elbo - f_mp$elbo,
              max(abs(f_mj$posterior[[1]]$mean - f_mp$posterior[[1]]$mean)),
              all(diff(f_mj$elbo_trace) >= -1e-10 * (1 + abs(f_mj$elbo)))))
}
print(mf, digits = 8, row.names = FALSE)
cat(sprintf("load after: %s\n", paste(readLines("/proc/loadavg"), collapse = " ")))
