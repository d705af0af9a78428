# Makes data/neuron.rda: one simulated neuron's spike counts in 5 ms bins,
# driven by a smooth stimulus and with refractoriness, with known ground truth.
# Run from the package root: Rscript data-raw/neuron.R
set.seed(20261124)
binwidth <- 0.005                     # seconds
n_trials <- 10L
bins_per_trial <- 2000L               # 10 s per trial
baseline_hz <- 20
stim_gain <- 0.8
lags <- 1:10                          # post-spike filter, in bins
history_filter <- -3 * exp(-(lags - 1) / 2)
trial_rows <- function(k) {
  stim <- as.numeric(stats::filter(rnorm(bins_per_trial), 0.95, method = "recursive"))
  stim <- (stim - mean(stim)) / sd(stim)
  y <- integer(bins_per_trial)
  for (t in seq_len(bins_per_trial)) {
    past <- t - lags
    h <- sum(history_filter[past >= 1] * y[past[past >= 1]])
    y[t] <- rpois(1L, binwidth * baseline_hz * exp(stim_gain * stim[t] + h))
  }
  data.frame(trial = k, time = (seq_len(bins_per_trial) - 1) * binwidth, stim = stim, spikes = y)
}
neuron <- do.call(rbind, lapply(seq_len(n_trials), trial_rows))
attr(neuron, "truth") <- list(binwidth = binwidth, baseline_hz = baseline_hz,
                              stim_gain = stim_gain, history_filter = history_filter)
save(neuron, file = "data/neuron.rda", compress = "xz")
