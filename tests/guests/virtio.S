/* Shared routines for the virtio test guests (net.S, snd.S): finding a modern virtio-pci
 * function and programming its queues. The includer defines QSIZE (entries per queue).
 * The transport's BAR0 layout is fixed: common config 0x0, device config 0x2000, notify
 * 0x3000 + 4 * queue. */
	.code32
	.text

/* find_virtio: %ebx = BAR0 of the first function on bus 0 whose vendor:device id is
 * %edi (device << 16 | vendor), or 0. */
find_virtio:
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $11, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	cmp %edi, %eax
	je 2f
	inc %ecx
	cmp $32, %ecx
	jb 1b
	xor %ebx, %ebx
	ret
2:	mov %ecx, %eax
	shl $11, %eax
	or $0x80000010, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	and $0xfffffff0, %eax
	mov %eax, %ebx
	ret

/* setup_queue: queue %eax with rings from %ecx (descriptors, +0x100 avail, +0x200 used). */
setup_queue:
	movw %ax, 0x16(%ebx)
	movw $QSIZE, 0x18(%ebx)
	movl %ecx, 0x20(%ebx)
	movl $0, 0x24(%ebx)
	lea 0x100(%ecx), %eax
	movl %eax, 0x28(%ebx)
	movl $0, 0x2c(%ebx)
	lea 0x200(%ecx), %eax
	movl %eax, 0x30(%ebx)
	movl $0, 0x34(%ebx)
	movw $1, 0x1c(%ebx)
	ret
