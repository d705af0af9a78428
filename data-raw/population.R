# Makes data/population.rda: three simulated, coupled neurons in 5 ms bins,
# with a shared stimulus, refractoriness and known coupling filters.
# Neuron 1 excites neuron 2; neuron 2 inhibits neuron 3; nothing else couples.
# Run from the package root: Rscript data-raw/population.R
set.seed(20261125)
binwidth <- 0.005                      # seconds
n_trials <- 5L
bins_per_trial <- 2000L                # 10 s per trial
n_neurons <- 3L
baseline_hz <- c(25, 15, 30)
stim_gain <- c(0.8, 0.2, -0.4)
L <- 20L                               # filters span lags 1-20 bins (100 ms)
lags <- seq_len(L)
refractory <- -3 * exp(-(lags - 1) / 2)
# filters[lag, from, to]: effect of a spike of neuron `from` at lag `lag`
# on the log rate of neuron `to`
filt <- array(0, c(L, n_neurons, n_neurons),
              dimnames = list(lag = lags, from = paste0("n", 1:3), to = paste0("n", 1:3)))
for (i in 1:3) filt[, i, i] <- refractory
filt[, 1, 2] <- 1.2 * exp(-(lags - 4)^2 / (2 * 2^2))     # excitation, peak at 20 ms
filt[, 2, 3] <- -1.5 * exp(-(lags - 5)^2 / (2 * 3^2))    # inhibition, peak at 25 ms
trial_rows <- function(k) {
  stim <- as.numeric(stats::filter(rnorm(bins_per_trial), 0.95, method = "recursive"))
  stim <- (stim - mean(stim)) / sd(stim)
  y <- matrix(0L, bins_per_trial, n_neurons)
  for (t in seq_len(bins_per_trial)) {
    past <- t - lags
    ok <- past >= 1
    for (j in seq_len(n_neurons)) {
      h <- 0
      for (i in seq_len(n_neurons)) h <- h + sum(filt[ok, i, j] * y[past[ok], i])
      y[t, j] <- rpois(1L, binwidth * baseline_hz[j] * exp(stim_gain[j] * stim[t] + h))
    }
  }
  data.frame(trial = k, time = (seq_len(bins_per_trial) - 1) * binwidth, stim = stim,
             n1 = y[, 1], n2 = y[, 2], n3 = y[, 3])
}
population <- do.call(rbind, lapply(seq_len(n_trials), trial_rows))
attr(population, "truth") <- list(binwidth = binwidth, baseline_hz = baseline_hz,
                                   stim_gain = stim_gain, filters = filt)
save(population, file = "data/population.rda", compress = "xz")
