## vbayes main demo: one neuron's spike counts in 5 ms bins.
## Does the stimulus drive the neuron?  Fit two variational Poisson GLMs,
## read their posteriors and compare them by the evidence lower bound.
library(vbayes)
data(neuron, package = "vbayes")
truth <- attr(neuron, "truth")
cat(sprintf("%d bins of %g s, %d spikes (%.1f Hz)\n", nrow(neuron), truth$binwidth,
            sum(neuron$spikes), sum(neuron$spikes) / (nrow(neuron) * truth$binwidth)))

## Rate model: spikes ~ Poisson(binwidth * exp(b0 + b1 * stim))
base <- vb(spikes ~ 1, data = neuron, family = poisson(), exposure = 0.005)
stim <- vb(spikes ~ stim, data = neuron, family = poisson(), exposure = 0.005,
           prior = normal(0, 1), prior_intercept = normal(0, 10))
summary(base)
summary(stim)

## The two bounds side by side: ELBO = E[log-lik] - KL(q || prior)
print(compare_models(baseline = base, stimulus = stim))

## The neuron is also refractory: add a post-spike filter over the last 10 bins
## (lag 1 onwards, reset at trial boundaries) and let the ELBO judge it
hist <- vb(spikes ~ stim + spike_history(spikes, diag(10), trial = trial), data = neuron,
           family = poisson(), exposure = 0.005)
print(compare_models(stimulus = stim, history = hist))
cat(sprintf("Stimulus gain with the history term: %.3f (truth %.1f)\n",
            coef(hist)[["stim"]], truth$stim_gain))
flt <- filters(hist)[[1]]
print(round(cbind(flt[, c("lag", "estimate", "lower", "upper")], truth = truth$history_filter), 2))

## A plot of the fitted rate against the binned data, written to a file
outdir <- Sys.getenv("VBAYES_DEMO_DIR", tempdir())
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(outdir, "neuron-rate.png")
grDevices::png(png_file, width = 900, height = 600)
op <- par(mfrow = c(2, 1), mar = c(4, 4, 2, 1))
idx <- neuron$trial == 1 & neuron$time < 4
rate <- predict(stim, neuron[idx, ], type = "response", interval = "credible") / 0.005
smooth <- stats::filter(neuron$spikes[idx], rep(1 / 20, 20), sides = 2) / 0.005
plot(neuron$time[idx], smooth, type = "l", col = "grey50", xlab = "time (s)",
     ylab = "rate (Hz)", main = "Trial 1: smoothed counts (grey) and VB rate with 95% band")
polygon(c(neuron$time[idx], rev(neuron$time[idx])), c(rate[, "lwr"], rev(rate[, "upr"])),
        col = grDevices::adjustcolor("steelblue", 0.3), border = NA)
lines(neuron$time[idx], rate[, "fit"], col = "steelblue", lwd = 2)
plot(stim, which = "elbo")
par(op)
grDevices::dev.off()
cat("Plot written to", png_file, "\n")
