# Populations and scale (issue 16): many fits on a future plan, ARD
# connectivity against a glmnet Poisson lasso, and a streamed fit from an
# SQLite file against biglm::bigglm.
#
#   Rscript bench/populations.R            (BENCH_STREAM_N=1e7 sets the streamed n)
#
# Markdown on stdout.  Peers: future (multisession), glmnet, biglm, RSQLite.
suppressPackageStartupMessages(library(vbayes))
quick <- nzchar(Sys.getenv("BENCH_QUICK")) # a smoke run at small sizes
# BENCH_PARTS=2,3 runs only those parts; BENCH_POP_T sets the bins of part 2
parts <- as.integer(strsplit(Sys.getenv("BENCH_PARTS", "1,2,3"), ",")[[1]])
cat(sprintf("machine: %d cores, %s; %s; load average at start: %s\n\n", parallel::detectCores(),
            R.version.string, format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"),
            paste(readLines("/proc/loadavg", warn = FALSE), collapse = " ")))

# ---- a coupled population, simulated bin by bin --------------------------------
sim_population <- function(Tn, B, W, b0, dt, seed) {
  set.seed(seed)
  N <- length(b0); L <- nrow(B)
  filt <- array(0, c(L, N, N))
  for (i in 1:N) for (j in 1:N) filt[, i, j] <- B %*% W[[i]][[j]]
  Y <- matrix(0L, Tn, N, dimnames = list(NULL, sprintf("n%02d", 1:N)))
  for (t in 1:Tn) {
    eta <- b0
    for (l in seq_len(min(L, t - 1))) eta <- eta + filt[l, , ] %*% Y[t - l, ]
    Y[t, ] <- rpois(N, dt * exp(pmin(eta, 6)))
  }
  Y
}
auc <- function(score, truth) (mean(rank(score)[truth]) - (sum(truth) + 1) / 2) / sum(!truth)

dt <- 0.005
B <- raised_cosine_basis(3, c(0.005, 0.03), 0.01, dt)
if (1 %in% parts) {
# ---- 1. vb_many: 200 neurons x 3 models, sequential against 2 workers -----------
n_units <- if (quick) 10 else 200
cat(sprintf("## vb_many(): %d neurons x 3 models\n\n", n_units))
set.seed(1)
many <- do.call(rbind, lapply(1:n_units, function(u) {
  Tn <- 4000
  stim <- as.numeric(stats::filter(rnorm(Tn), rep(1 / 5, 5), circular = TRUE))
  y <- rpois(Tn, dt * exp(log(20) + runif(1, 0, 0.8) * stim))
  data.frame(neuron = u, stim = stim, spikes = y, trial = 1L)
}))
models <- list(null = spikes ~ 1, stim = spikes ~ stim, stim_hist = spikes ~ stim + spike_history(spikes, B))
run_models <- function() lapply(models, function(f) vb_many(f, many, by = "neuron", family = poisson(),
                                                             exposure = dt, keep_fits = FALSE))
future::plan(future::sequential)
t_seq <- system.time(r_seq <- run_models())[["elapsed"]]
future::plan(future::multisession, workers = 2)
invisible(vb_many(spikes ~ 1, many[many$neuron <= 2, ], by = "neuron", family = poisson())) # start workers
t_par <- system.time(r_par <- run_models())[["elapsed"]]
future::plan(future::sequential)
fit_time <- sum(vapply(r_seq, function(r) sum(r$units$time), numeric(1)))
same <- all(mapply(function(a, b) identical(a$units$elbo, b$units$elbo), r_seq, r_par))
tab <- elbo_table(null = r_seq$null, stim = r_seq$stim, stim_hist = r_seq$stim_hist)
b <- bms(tab)
cat(sprintf("| plan | wall time (%d fits) | per fit |\n|---|---|---|\n", 3 * n_units))
cat(sprintf("| sequential | %.1f s | %.1f ms (engine %.1f ms) |\n", t_seq, 1000 * t_seq / (3 * n_units), 1000 * fit_time / (3 * n_units)))
cat(sprintf("| multisession, 2 workers | %.1f s | %.1f ms |\n\n", t_par, 1000 * t_par / (3 * n_units)))
cat(sprintf("speed-up %.2fx; identical ELBOs on both plans: %s; bms() exceedance: %s\n\n", t_seq / t_par, same,
            paste(sprintf("%s %.3f", colnames(tab), b$exceedance), collapse = ", ")))
}

if (2 %in% parts) {
# ---- 2. ARD connectivity of a 50-neuron population against a glmnet lasso -------
N <- if (quick) 8 else 50
cat(sprintf("## vb_population(): %d neurons with sparse coupling\n\n", N))
set.seed(3)
A <- matrix(0, N, N)
off <- which(row(A) != col(A))
present <- sample(off, round(0.05 * length(off)))
A[present] <- sample(c(-1, 1), length(present), TRUE) * runif(length(present), 0.5, 1.2)
W <- lapply(1:N, function(i) lapply(1:N, function(j) if (i == j) c(-2, -0.5, 0) else A[i, j] * c(0.6, 0.8, 0.3)))
Tn <- as.integer(Sys.getenv("BENCH_POP_T", if (quick) "5000" else "10000"))
Y <- sim_population(Tn, B, W, rep(log(15), N), dt, 4)
truth <- (A != 0)[off]
t_vb <- system.time(pop <- vb_population(Y, basis = B))[["elapsed"]]
z <- abs(pop$gain / pop$gain_sd)[off]
cred <- (pop$lower > 0 | pop$upper < 0)[off]
# the peer: per neuron, a Poisson lasso on the same design, lambda by 5-fold CV
t_gl <- system.time({
  H <- do.call(cbind, lapply(1:N, function(j) spike_history(Y[, j], B)))
  gl_gain <- matrix(0, N, N)
  for (i in 1:N) {
    cv <- glmnet::cv.glmnet(H, Y[, i], family = "poisson", offset = rep(log(dt), Tn), nfolds = 5)
    cf <- as.numeric(stats::coef(cv, s = "lambda.min"))[-1]
    gl_gain[i, ] <- vapply(1:N, function(j) sum(colSums(B) * cf[(j - 1) * 3 + 1:3]), numeric(1))
  }
})[["elapsed"]]
gl_sel <- (gl_gain != 0)[off]
cat("| method | AUC (true vs absent couplings) | true found | false positives (of ", sum(!truth), ") | time |\n|---|---|---|---|---|\n", sep = "")
cat(sprintf("| vbayes ARD (|gain|/sd; 95%% credible) | %.3f | %d / %d | %d | %.1f s |\n", auc(z, truth),
            sum(cred & truth), sum(truth), sum(cred & !truth), t_vb))
cat(sprintf("| glmnet Poisson lasso, cv lambda.min (|gain|; nonzero) | %.3f | %d / %d | %d | %.1f s |\n\n",
            auc(abs(gl_gain)[off], truth), sum(gl_sel & truth), sum(truth), sum(gl_sel & !truth), t_gl))
}

if (3 %in% parts) {
# ---- 3. a streamed fit from SQLite against biglm::bigglm -----------------------
n <- as.numeric(Sys.getenv("BENCH_STREAM_N", if (quick) "2e5" else "1e7"))
p <- 20
cat(sprintf("## Streaming: Poisson, n = %.0e, p = %d, from an SQLite file\n\n", n, p))
db <- tempfile(fileext = ".sqlite")
con <- DBI::dbConnect(RSQLite::SQLite(), db)
set.seed(5)
beta <- c(0.2, rnorm(p - 1, sd = 0.1))
chunk <- min(5e5, n)
t_write <- system.time(for (k in seq_len(ceiling(n / chunk))) {
  m <- min(chunk, n - (k - 1) * chunk)
  X <- matrix(rnorm(m * (p - 1)), m, p - 1, dimnames = list(NULL, sprintf("x%02d", 1:(p - 1))))
  d <- data.frame(X, y = rpois(m, exp(beta[1] + X %*% beta[-1])))
  DBI::dbWriteTable(con, "obs", d, append = k > 1)
})[["elapsed"]]
DBI::dbDisconnect(con)
fml <- stats::as.formula(paste("y ~", paste(sprintf("x%02d", 1:(p - 1)), collapse = " + ")))
# each peer in its own R process, so the peak resident memory is its own
child <- function(code) {
  f <- tempfile(fileext = ".R")
  writeLines(c("suppressPackageStartupMessages({library(vbayes); library(DBI)})",
               sprintf("db <- '%s'; fml <- %s", db, paste(deparse(fml), collapse = "")),
               "con <- dbConnect(RSQLite::SQLite(), db)", code,
               "hwm <- grep('VmHWM', readLines('/proc/self/status'), value = TRUE)",
               "cat(sprintf('RESULT %.3f %s %.3f %d\\n', t[['elapsed']], gsub('[^0-9]', '', hwm), t[['user.self']] + t[['sys.self']], passes))"), f)
  out <- system2(file.path(R.home("bin"), "Rscript"), f, stdout = TRUE, stderr = TRUE)
  if (!any(grepl("^RESULT", out))) stop("a benchmark child failed:\n", paste(out, collapse = "\n"))
  r <- strsplit(sub("^RESULT ", "", grep("^RESULT", out, value = TRUE)), " ")[[1]]
  list(time = as.numeric(r[1]), mb = as.numeric(r[2]) / 1024, cpu = as.numeric(r[3]), passes = as.integer(r[4]), out = out)
}
vbr <- child(c("t <- system.time(f <- vb(fml, data = vb_chunks(con, 'SELECT * FROM obs', chunk_size = 2e5),",
               "  family = poisson(), prior = normal(0, 2.5), prior_intercept = normal(0, 10)))", "passes <- f$passes", "saveRDS(coef(f), file.path(dirname(db), 'vb_coef.rds'))"))
vbp <- child(c("future::plan(future::multisession, workers = 2)",
               "src <- vb_chunks(con, 'SELECT * FROM obs ORDER BY rowid', chunk_size = 2e5, connect = function() DBI::dbConnect(RSQLite::SQLite(), db))",
               "t <- system.time(f <- vb(fml, data = src, family = poisson(), prior = normal(0, 2.5), prior_intercept = normal(0, 10)))",
               "passes <- f$passes"))
bgr <- child(c("src <- local({ res <- NULL; function(reset) { if (reset) { if (!is.null(res)) dbClearResult(res);",
               "  res <<- dbSendQuery(con, 'SELECT * FROM obs'); return(NULL) }",
               "  if (dbHasCompleted(res)) return(NULL); d <- dbFetch(res, n = 2e5); if (nrow(d)) d else NULL } })",
               "t <- system.time(g <- biglm::bigglm(fml, data = src, family = poisson(), chunksize = 2e5, maxit = 20))", "passes <- g$iterations",
               "saveRDS(coef(g), file.path(dirname(db), 'bg_coef.rds'))"))
dcoef <- max(abs(readRDS(file.path(dirname(db), "vb_coef.rds")) - readRDS(file.path(dirname(db), "bg_coef.rds"))))
cat("| method | elapsed | CPU | passes over the data (bigglm: IRLS iterations) | peak resident memory |\n|---|---|---|---|---|\n")
cat(sprintf("| vb(data = vb_chunks(con, query)) fullrank | %.1f s | %.1f s | %d | %.0f MB |\n", vbr$time, vbr$cpu, vbr$passes, vbr$mb))
cat(sprintf("| the same, chunks read by 2 multisession workers (`connect =`) | %.1f s | %.1f s (this process only) | %d | %.0f MB (this process only) |\n", vbp$time, vbp$cpu, vbp$passes, vbp$mb))
cat(sprintf("| biglm::bigglm (Poisson IRLS, ML only) | %.1f s | %.1f s | %d | %.0f MB |\n\n", bgr$time, bgr$cpu, bgr$passes, bgr$mb))
cat(sprintf("writing the table took %.0f s (file %.0f MB); max |vb mean - bigglm MLE| = %.2g (n is large: the prior is negligible)\n",
            t_write, file.size(db) / 2^20, dcoef))
cat(sprintf("load average at the end: %s\n", paste(readLines("/proc/loadavg", warn = FALSE), collapse = " ")))
unlink(db)
}

